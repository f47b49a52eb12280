"""Where a run's results go: local files in the run dir (always) and Weights & Biases (optional).

``metrics.jsonl`` (one JSON object per epoch) and ``summary.json`` are rewritten whole through a
temporary file and a rename, so a crash never leaves a half-written or duplicated line.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from lenet.config import LoggerConfig, WandbMode
from lenet.errors import UserError
from lenet.wandb_worker import NO_CREDENTIALS

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
        _fsync(Path(tmp))  # the data on disk before the rename makes it visible
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename itself, so a power cut keeps the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every OS (Windows); nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that ``atomic_file`` left in ``folder`` when a process died before its rename."""
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never a part."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in order; empty when the run logged none."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's summary.json, or None when there is none."""
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_wandb_mode(mode: Optional[WandbMode]) -> str:
    """The W&B mode to use: the configured one, else $WANDB_MODE, else offline."""
    if mode is not None:
        return mode.value
    return os.environ.get("WANDB_MODE") or "offline"


PROCESS_ENDED = "the W&B process ended unexpectedly (its messages are above)"
NO_CREDENTIALS_MESSAGE = (
    "logger.mode=online needs W&B credentials and none are configured: run `wandb login` "
    "or set WANDB_API_KEY, or log offline with logger.mode=offline and `wandb sync` later"
)


class WandbProcess:
    """The child process that runs W&B (``lenet/wandb_worker.py``); the jobs of a sweep in one process share it.

    W&B is never imported in the training process: its import (~0.55 s of one core on a 2-core CPU)
    runs in the child, on the other core, while torch is imported here.
    """

    def __init__(self) -> None:
        package_parent = str(Path(__file__).resolve().parents[1])  # importable even when not installed
        python_path = os.pathsep.join(filter(None, (package_parent, os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": python_path}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "lenet.wandb_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1, env=env,
        )  # fmt: skip

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self._process.poll() is None

    def send(self, op: str, **fields: Any) -> None:
        """Send one command; one the process can no longer take is dropped (``answer`` then says it ended)."""
        with contextlib.suppress(BrokenPipeError, ValueError):  # ValueError: stdin already closed
            self._process.stdin.write(json.dumps({"op": op, **fields}, default=str) + "\n")
            self._process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        """Wait for the answer to an ``init`` or ``finish`` command."""
        line = self._process.stdout.readline()
        return json.loads(line) if line else {"ok": False, "error": PROCESS_ENDED}

    def close(self) -> None:
        """Close its stdin: it finishes a run left unfinished as failed, shuts W&B down and exits."""
        with contextlib.suppress(OSError):
            self._process.stdin.close()


_wandb_process: Optional[WandbProcess] = None


def prepare_wandb(mode: Optional[WandbMode]) -> None:
    """Start the W&B process unless the mode is disabled; call it before torch is imported."""
    global _wandb_process
    if (_wandb_process is not None and _wandb_process.alive()) or resolve_wandb_mode(mode) == "disabled":
        return
    _wandb_process = WandbProcess()
    atexit.register(_wandb_process.close)


class WandbRun:
    """A W&B run kept by the W&B process; commands return at once, except ``wait_started`` and ``finish``."""

    def __init__(self, process: WandbProcess, mode: str, **init_kwargs: Any):
        self._process = process
        self._init_answer: Optional[dict[str, Any]] = None  # read by the first wait_started
        process.send("init", mode=mode, **init_kwargs)

    def wait_started(self) -> None:
        """Wait until the run has started; raise UserError with W&B's reason when it could not."""
        if self._init_answer is None:
            self._init_answer = self._process.answer()
        error = self._init_answer.get("error")
        if error == NO_CREDENTIALS:
            raise UserError(NO_CREDENTIALS_MESSAGE)
        if not self._init_answer["ok"]:
            raise UserError(f"W&B could not start the run: {error}; logger=none trains without W&B")

    def log(self, row: dict[str, Any], step: int) -> None:
        """Log one row of metrics at ``step``."""
        self._process.send("log", row=row, step=step)

    def log_weights(self, path: Path, artifact_name: str) -> None:
        """Upload a weights file as a model artifact."""
        self._process.send("artifact", path=str(path.resolve()), name=artifact_name)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Set the run's summary and finish it, marked failed when ``exit_code`` is not 0; wait until it is done."""
        with contextlib.suppress(UserError):  # a run that never started has nothing to finish
            self.wait_started()
        if not self._init_answer["ok"]:
            return
        self._process.send("finish", summary=summary, exit_code=exit_code)
        answer = self._process.answer()
        if not answer["ok"]:
            log.warning("W&B could not finish the run: %s", answer["error"])


def start_wandb(
    cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], group: Optional[str], name: Optional[str]
) -> Optional[WandbRun]:
    """Start a W&B run whose files live in ``run_dir``, or None when the mode is disabled.

    Returns before the run has started: ``WandbRun.wait_started`` fails fast when it cannot (online without
    credentials), so the caller can load data meanwhile.
    """
    mode = resolve_wandb_mode(cfg.mode)
    if mode == "disabled":
        return None
    prepare_wandb(cfg.mode)
    assert _wandb_process is not None
    return WandbRun(
        _wandb_process, mode, dir=str(run_dir.resolve()), project=cfg.project, entity=cfg.entity,
        group=cfg.group or group, name=cfg.name or name, tags=list(cfg.tags) or None, config=config,
    )  # fmt: skip


class Tracker:
    """Records one run: metrics and summary files in its dir, mirrored to a W&B run if given."""

    def __init__(self, run_dir: Path, wandb_run: Optional[WandbRun] = None):
        self.run_dir = run_dir
        self.wandb_run = wandb_run

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Write all epochs so far to metrics.jsonl, replacing what it held."""
        write_atomic(self.run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        """Write all epochs so far to metrics.jsonl and send the newest to W&B."""
        self.write_metrics(history)
        if self.wandb_run is not None and history:
            self.wandb_run.log(history[-1], step=history[-1]["epoch"])

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Send the epochs a resumed run had finished before to its new W&B run."""
        if self.wandb_run is None:
            return
        for row in history:
            self.wandb_run.log(row, step=row["epoch"])

    def log_weights(self, path: Path, artifact_name: str) -> None:
        """Upload the weights file as a W&B model artifact."""
        if self.wandb_run is not None:
            self.wandb_run.log_weights(path, artifact_name)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Write summary.json and finish the W&B run, marked failed when ``exit_code`` is not 0."""
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        if self.wandb_run is not None:
            keys = ("status", "final_test_acc", "best_test_acc", "best_epoch", "num_params", "wall_seconds")
            wandb_run, self.wandb_run = self.wandb_run, None
            wandb_run.finish({k: summary[k] for k in keys if summary.get(k) is not None}, exit_code)
