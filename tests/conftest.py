"""Shared helpers: tiny IDX datasets written on the fly, and train.py run the way a user types it."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "lenet" / "conf"  # the config groups, shipped inside the package
REAL_DATA = REPO.parent / "shared" / "data"  # a real MNIST copy, present on the project's machines only


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file (gzipped when ``gz``), the format MNIST ships in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = False) -> Path:
    """Write the four MNIST files (synthetic digits) into ``folder``; return it."""
    from lenet.core.data import make_synthetic

    for split, n, seed in (("train", n_train, 11), ("t10k", n_test, 12)):
        images, labels = make_synthetic(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
    return folder


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """A data.root holding a small MNIST in torchvision's layout (root/MNIST/raw/...)."""
    write_mnist(tmp_path / "data" / "MNIST" / "raw")
    return tmp_path / "data"


def _train_env(env: dict | None) -> dict:
    # PYTHONSAFEPATH: the checkout's root is not put on the path, so a file a user left there (my_nets.py) never
    # hides the module a test writes (Python >= 3.11; lenet itself comes from the install's src/)
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONSAFEPATH": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("WANDB_SERVICE", None)  # a run starts its own W&B service, not the one a test process started
    return full_env


def run_train(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` in ``cwd`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=_train_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_train(*args: str, cwd: Path, env: dict | None = None, **popen: Any) -> subprocess.Popen:
    """Start ``python train.py ARGS`` in ``cwd`` as ``run_train`` runs it, without waiting: its output piped, as text."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=_train_env(env), **options)


def wait_for_first_epoch(metrics: Path, timeout: float = 120) -> None:
    """Poll until a running job's metrics.jsonl holds an epoch (it is rewritten whole, never half a line)."""
    deadline = time.time() + timeout
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.01)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall-clock seconds: what must be equal between runs."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# a run of a few seconds: small synthetic splits on the CPU, no logger
SMALL = [
    "logger=none",
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=128",
    "trainer.batch_size=64",
    "device=cpu",
]
TINY = [*SMALL, "device.num_threads=1", "trainer.epochs=1"]  # one epoch on one thread

# one thread pinned: runs compared bit for bit must use the same count
SYNTHETIC = [
    "logger=none",
    "data=synthetic",
    "data.test_size=256",
    "trainer.batch_size=64",
    "device=cpu",
    "device.num_threads=1",
]


def compose_config(*overrides: str):
    """The typed config and its resolved record, composed from conf/ with SYNTHETIC and ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lenet.run.config import register_configs, to_typed

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[*SYNTHETIC, *overrides])
    return to_typed(cfg), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def run_in_process(tmp_path: Path, name: str, *overrides: str, resume_dir: Path | None = None):
    """Run a job in this process into ``tmp_path/name`` (or ``resume_dir``); its summary and its run dir."""
    from lenet.run.job import JobInfo
    from lenet.run.lifecycle import run_job

    cfg, record = compose_config(*overrides)
    run_dir = resume_dir or tmp_path / name
    run_dir.mkdir(exist_ok=True)
    outcome = run_job(cfg, JobInfo(run_dir=run_dir, cwd=tmp_path), record)
    return dict(outcome.summary), run_dir


def as_if_interrupted(run_dir: Path) -> None:
    """Mark a finished run as stopped before its end: resuming it then reads its checkpoint."""
    summary = read_json(run_dir / "summary.json")
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))


def job_summaries(sweep: Path) -> list[dict]:
    """The summaries of a sweep's jobs 0, 1, ... in order."""
    return [read_json(sweep / str(n) / "summary.json") for n in range(len(list(sweep.glob("*/summary.json"))))]


def interrupt_after_first_checkpoint(monkeypatch) -> None:
    """Make runs stop as after a SIGTERM right after their first checkpoint (until ``monkeypatch.undo()``)."""
    from lenet.core.errors import Interrupted
    from lenet.run.checkpoint import Checkpointing

    save = Checkpointing.on_epoch_end

    def save_then_stop(self, run, row):
        save(self, run, row)
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(Checkpointing, "on_epoch_end", save_then_stop)


def exact_resume_check(tmp_path: Path, overrides: list[str]):
    """Run ``overrides`` whole, and stopped after epoch 1 then resumed: the metrics and weights must be equal."""
    import torch

    from lenet.core.errors import Interrupted
    from lenet.run.checkpoint import CHECKPOINT_FILE, load_checkpoint

    full, full_dir = run_in_process(tmp_path, "full", *overrides)
    with pytest.MonkeyPatch.context() as monkeypatch, pytest.raises(Interrupted):
        interrupt_after_first_checkpoint(monkeypatch)
        run_in_process(tmp_path, "part", *overrides)
    assert len(load_checkpoint(tmp_path / "part" / CHECKPOINT_FILE)["history"]) == 1
    resumed, _ = run_in_process(tmp_path, "part", *overrides, "trainer.resume=true")
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1
    assert without_time(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == without_time(
        read_jsonl(full_dir / "metrics.jsonl")
    )
    w_full, w_part = torch.load(full_dir / "lenet_synthetic.pth"), torch.load(tmp_path / "part" / "lenet_synthetic.pth")
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    return full, full_dir


def doc_block(doc: str, first_line: str) -> str:
    """The fenced code block of ``doc`` (a path from the repo root) that starts with ``first_line``: as users read it."""
    blocks = re.findall(r"```\w*\n(.*?)```", (REPO / doc).read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def finished_run(folder: Path, *overrides: str) -> Path:
    """A run trained in this process into ``folder``, with the ``.hydra/`` files train.py writes: one to load back."""
    from omegaconf import OmegaConf

    from lenet.run.job import JobInfo
    from lenet.run.lifecycle import run_job

    cfg, record = compose_config(*overrides)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(record), folder / ".hydra" / "config.yaml")
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in (*SYNTHETIC, *overrides)))
    run_job(cfg, JobInfo(run_dir=folder, cwd=folder.parent), record)
    return folder
