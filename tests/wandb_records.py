"""Read an offline W&B run back from its .wandb file (W&B's LevelDB-style log of protobuf records)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<4sHB")  # ":W&B", magic, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type: 1 full, 2 first, 3 middle, 4 last


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """All records of one ``run-*.wandb`` file, in order."""
    data = path.read_bytes()
    ident, _, _ = _HEADER.unpack_from(data)
    assert ident == b":W&B", path
    pos, pending, records = _HEADER.size, b"", []
    while pos + _RECORD.size <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD.size:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if kind == 0:
            break
        chunk, pos = data[pos : pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """What an offline run recorded: its run record, history rows, summary, config and exit code."""

    def __init__(self, run_dir: Path, run: str = "offline-run-*", wait: float = 20.0):
        (self.path,) = sorted(run_dir.glob(f"wandb/{run}/run-*.wandb"))
        # W&B's service process writes the file; on a busy machine its last records can land after finish returns
        deadline = time.monotonic() + wait
        while True:
            self.records = read_records(self.path)
            kinds = [r.WhichOneof("record_type") for r in self.records]
            if {"run", "exit"} <= set(kinds) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.kinds = set(kinds)
        self.run = next(r.run for r, k in zip(self.records, kinds) if k == "run")
        self.history = [
            {_key(item): json.loads(item.value_json) for item in r.history.item}
            for r, k in zip(self.records, kinds)
            if k == "history"
        ]
        self.summary = {}
        for r, k in zip(self.records, kinds):
            if k == "summary":
                self.summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        self.config = {c.key: json.loads(c.value_json) for c in self.run.config.update}
        self.exit_code = next((r.exit.exit_code for r, k in zip(self.records, kinds) if k == "exit"), None)
