"""Where a run's results go: local files in the run dir (always) and the configured loggers (``lenet.run.loggers``).

``metrics.jsonl`` (one JSON object per epoch) and ``summary.json`` are rewritten whole through a
temporary file and a rename, so a crash never leaves a half-written or duplicated line.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from lenet.run.loggers import Loggers

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


class Tracker:
    """Records one run: metrics and summary files in its dir, passed on to its loggers."""

    def __init__(self, run_dir: Path, loggers: Optional[Loggers] = None):
        self.run_dir = run_dir
        self.loggers = loggers or Loggers()

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Write all epochs so far to metrics.jsonl, replacing what it held."""
        write_atomic(self.run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        """Write all epochs so far to metrics.jsonl and pass the newest to the loggers."""
        self.write_metrics(history)
        if history:
            self.loggers.log_row(history[-1], step=history[-1]["epoch"])

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Pass the epochs a resumed run had finished before to its loggers."""
        self.loggers.resume(history)

    def log_file(self, path: Path, kind: str) -> None:
        """Pass a file of the run (``kind`` model: the final weights) to the loggers."""
        self.loggers.log_file(path, kind)

    def finish(self, summary: dict[str, Any], exit_code: int, write_summary: bool = True) -> None:
        """Write summary.json (unless told not to) and finish the loggers, marked failed when ``exit_code`` is not 0."""
        if write_summary:
            write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        self.loggers.finish(summary, exit_code)
