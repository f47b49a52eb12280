"""How a run ended: the one owner of its status, of ``summary.json`` and of what a sweep learns of a job.

Every reader of a run's outcome goes through here: the run writes its summary with ``write_summary``;
the sweep's verdict, the Optuna sweeper, the launchers and the tools read ``read_summary`` or, for a
job of a sweep, ``outcome_of(job_return)``. A job that did not complete raises ``JobFailed`` (Hydra
then records its ``JobReturn`` as ``JobStatus.FAILED`` with it); one that did returns its ``Outcome``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional

from lenet.core.errors import Interrupted, Pruned, UserError
from lenet.run.files import write_atomic

SUMMARY_FILE = "summary.json"
SUMMARY_RESERVE = 8192  # bytes a summary.json keeps, to be rewritten in place when the disk is full


class Status(str, Enum):
    """How a run ended (``running`` while it runs)."""

    running = "running"
    completed = "completed"
    failed = "failed"
    interrupted = "interrupted"
    pruned = "pruned"  # stopped by its search's pruner: ended as asked, not a failure

    @property
    def ok(self) -> bool:
        """Whether a sweep counts the run as done as asked."""
        return self in (Status.completed, Status.pruned)


class SummaryError(UserError):
    """A summary.json that cannot be read (truncated, corrupt, not ours)."""


@dataclass(frozen=True)
class Outcome:
    """A run's end as its summary records it."""

    status: Status
    run_dir: Path
    error: Optional[str] = None
    summary: Mapping[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Optional[float]:
        """A number of the summary (e.g. ``final_test_acc``), None when it has none."""
        value = self.summary.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class JobFailed(Exception):
    """Raised by a job of a sweep that did not complete: Hydra records it as ``JobStatus.FAILED``."""

    def __init__(self, outcome: Outcome):
        super().__init__(f"{outcome.status.value}: {outcome.error}")
        self.outcome = outcome

    def __reduce__(self) -> Any:  # crosses process boundaries with the JobReturn
        return (JobFailed, (self.outcome,))


class DiskFull(UserError):
    """The disk the run writes to is full."""


def status_of(error: BaseException) -> tuple[Status, str, int]:
    """The status, the error line and the exit code of a run that ended with ``error``."""
    if isinstance(error, Pruned):
        return Status.pruned, str(error), 0
    if isinstance(error, Interrupted):
        return Status.interrupted, str(error), 128 + signal.Signals[error.signal_name].value
    if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C: stopped at once
        return Status.interrupted, "interrupted by SIGINT", 130
    if isinstance(error, UserError):
        return Status.failed, str(error), 1
    return Status.failed, f"{type(error).__name__}: {error}", 1


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's summary.json, or None when there is none; one that cannot be read raises SummaryError."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        Status(summary["status"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SummaryError(
            f"{path} cannot be read ({type(e).__name__}: {e}); the run's other files may still hold its results"
        ) from None
    return summary


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json whole (a reader sees the old one or the new one), even on a full disk.

    The file is padded (with JSON's trailing whitespace) to SUMMARY_RESERVE bytes, so that when the disk is
    full it can be rewritten in place, in the blocks it already has: a run that fails for want of space
    still records what it did.
    """
    path = Path(run_dir) / SUMMARY_FILE
    record = {k: (v.value if isinstance(v, Status) else v) for k, v in summary.items()}
    text = json.dumps(record, indent=2) + "\n"
    text += " " * max(0, SUMMARY_RESERVE - len(text.encode()))
    try:
        write_atomic(path, text)
    except OSError as e:
        if (
            e.errno not in (errno.ENOSPC, errno.EDQUOT)
            or not path.is_file()
            or path.stat().st_size < len(text.encode())
        ):
            raise
        with open(path, "r+") as f:  # the disk is full: into the blocks the file has
            f.write(text)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


def outcome_from_summary(run_dir: Path, summary: Mapping[str, Any]) -> Outcome:
    """The outcome a summary records."""
    return Outcome(Status(summary["status"]), Path(run_dir), summary.get("error"), dict(summary))


def read_outcome(run_dir: Path) -> Outcome:
    """The outcome recorded in ``run_dir``; a missing or unreadable summary is a failed outcome saying so."""
    try:
        summary = read_summary(run_dir)
    except SummaryError as e:
        return Outcome(Status.failed, Path(run_dir), str(e))
    if summary is None:
        return Outcome(Status.failed, Path(run_dir), "the job ended without recording a result (no summary.json)")
    return outcome_from_summary(run_dir, summary)


def outcome_of(job_return: Any) -> Outcome:
    """The outcome of a sweep's job from the ``JobReturn`` its launcher gave back."""
    from hydra.core.utils import JobStatus

    run_dir = Path(str(getattr(job_return, "working_dir", None) or "."))
    hydra_cfg = getattr(job_return, "hydra_cfg", None)
    if hydra_cfg is not None:
        from omegaconf import OmegaConf

        run_dir = Path(str(OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=run_dir)))
    value = job_return._return_value  # the attribute: reading return_value raises for a failed job
    if job_return.status == JobStatus.COMPLETED and isinstance(value, Outcome):
        return value
    if isinstance(value, JobFailed):
        return value.outcome
    if isinstance(value, BaseException):
        return Outcome(Status.failed, run_dir, f"{type(value).__name__}: {value}")
    return Outcome(Status.failed, run_dir, f"the job returned {value!r}, not an outcome")


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
