"""Shared helpers: tiny IDX datasets written on the fly, and train.py run the way a user types it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
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


def run_train(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` in ``cwd`` as a user would, capturing its output."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def wait_for_first_epoch(metrics: Path, timeout: float = 120) -> None:
    """Poll until a running job's metrics.jsonl holds an epoch (it is rewritten whole, never half a line)."""
    deadline = time.time() + timeout
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.01)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
