"""How a run ended: the one owner of its status, of ``summary.json`` and of what a sweep learns of a job.

``Summary`` is summary.json, typed: every key a run records is one of its fields (a callback's own keys
go to ``extra``); it is written only by ``write_summary`` and read only by ``read_summary``, which
refuses a file whose values are not of their types in one line. The sweep's verdict, the Optuna
sweeper, the launchers and the tools read a run's outcome through here. A job that did not complete
raises ``JobFailed`` (Hydra then records its ``JobReturn`` as ``JobStatus.FAILED`` with it); one that
did returns its ``Outcome``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import signal
import typing
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from lenet.core.errors import Interrupted, Pruned, UserError
from lenet.run.files import FULL_DISK, write_bytes, write_text

SUMMARY_FILE = "summary.json"
# a file of this many bytes that a running run keeps beside its summary: on a full disk it is deleted, and the
# blocks it frees take the summary's last version (summary.json itself holds only its JSON)
RESERVE_FILE = ".summary.reserve"
RESERVE_BYTES = 64 * 1024


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
    """A summary.json that cannot be read (truncated, corrupt, not ours, values of the wrong type)."""


def now() -> str:
    """The local time, as summaries record it."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass(eq=False)
class Summary(MutableMapping):
    """summary.json: a run's labels, how it ended and what it reached. Reads and writes as a dict of its keys."""

    status: Status = Status.running
    error: Optional[str] = None
    final_test_acc: Optional[float] = None
    best_test_acc: Optional[float] = None  # the test accuracy at best_epoch
    best_epoch: Optional[int] = None  # the epoch of the best selected_on value
    selected_on: Optional[str] = None  # the metrics key that chose best_epoch (and best.pth)
    best_value: Optional[float] = None  # its value there
    final_val_acc: Optional[float] = None
    best_val_acc: Optional[float] = None
    final_val_loss: Optional[float] = None
    final_test_loss: Optional[float] = None
    final_train_loss: Optional[float] = None
    num_params: Optional[int] = None
    epochs: Optional[int] = None
    epochs_completed: int = 0
    stopped_early: Optional[str] = None
    wall_seconds: Optional[float] = None
    seconds_per_epoch: Optional[float] = None
    overrides: list = field(default_factory=list)
    model: Optional[str] = None
    pooling: Optional[str] = None
    loss: Optional[str] = None
    optimizer: Optional[str] = None
    scheduler: Optional[str] = None
    callbacks: list = field(default_factory=list)
    dataset: Optional[str] = None
    seed: Optional[int] = None
    split: Optional[dict] = None  # images per split: train, val, test
    device: Optional[str] = None
    cuda_graphs: Optional[bool] = None  # on CUDA: whether full batches were replayed as one captured step
    cuda_graphs_off: Optional[str] = None  # and if not, why
    compile_seconds: Optional[float] = None  # with trainer.compile=true: compiling before the first step
    num_threads: Optional[int] = None
    num_threads_probe: Optional[dict] = None
    weights: Optional[str] = None  # the final weights file
    best_weights: Optional[str] = None  # the weights of best_epoch
    eval_weights: str = "model"
    image_size: Optional[list] = None
    resumed_from_epoch: Optional[int] = None
    fused_with: Optional[int] = None  # trained as one program with this many jobs (hydra/launcher=fused)
    setup_seconds: Optional[float] = None
    startup_seconds: Optional[float] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    torch_version: Optional[str] = None
    extra: dict = field(default_factory=dict)  # keys of its own a callback adds, final_<metric> of extra metrics

    # ------------------------------------------------------------------ a dict of its keys
    def _fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name != "extra"]

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _FIELDS:
            setattr(self, key, Status(value) if key == "status" else value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in _FIELDS:
            raise KeyError(f"{key} is a field of every summary")
        del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from _FIELDS
        yield from (k for k in self.extra if k not in _FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS) + len(self.extra)

    def as_dict(self) -> dict[str, Any]:
        """Its keys and values as summary.json holds them (the status as its name)."""
        return {k: (v.value if isinstance(v, Status) else v) for k, v in self.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Summary":
        """The summary ``data`` records; ValueError naming a key whose value is not of its type."""
        summary = cls()
        for key, value in data.items():
            if key in _FIELDS:
                _check_type(key, value)
            summary[key] = value
        return summary


_FIELDS = tuple(f.name for f in dataclasses.fields(Summary) if f.name != "extra")
_HINTS = typing.get_type_hints(Summary)


def _check_type(key: str, value: Any) -> None:
    hint = _HINTS[key]
    if key == "status":
        Status(value)
        return
    allowed = tuple(a for a in typing.get_args(hint) if a is not type(None)) or (hint,)
    origins = tuple(typing.get_origin(a) or a for a in allowed)
    if value is None and type(None) in typing.get_args(hint):
        return
    ok = isinstance(value, origins) and not (isinstance(value, bool) and bool not in origins)
    if float in origins and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ValueError(f"its {key} is {value!r}, not {' or '.join(o.__name__ for o in origins)}")


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


def read_summary(run_dir: Path) -> Optional[Summary]:
    """The run's summary.json, or None when there is none; one that cannot be read raises SummaryError."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if not path.is_file():
            raise ValueError("it is not a file")
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"it holds a {type(data).__name__}, not an object")
        if "status" not in data:
            raise ValueError("it has no status")
        return Summary.from_dict(data)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise SummaryError(
            f"{path} cannot be read ({type(e).__name__}: {reason}); the run's other files may still hold its results"
        ) from None


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json whole (a reader sees the old one or the new one), even on a full disk.

    While the run runs, a reserve file of RESERVE_BYTES lies beside it; when the disk is full, it is deleted
    and its blocks take the summary, so a run that fails for want of space still records what it did. It
    goes once the run has ended.
    """
    run_dir = Path(run_dir)
    record = summary.as_dict() if isinstance(summary, Summary) else Summary.from_dict(summary).as_dict()
    text = json.dumps(record, indent=2) + "\n"
    reserve = run_dir / RESERVE_FILE
    try:
        write_text(run_dir / SUMMARY_FILE, text)
    except OSError as e:
        if e.errno not in FULL_DISK or not reserve.is_file() or reserve.is_symlink():
            raise
        reserve.unlink()  # the disk is full: the reserve's blocks take the summary
        write_text(run_dir / SUMMARY_FILE, text)
        return
    running = record["status"] == Status.running.value
    if running and not reserve.exists():
        try:
            write_bytes(reserve, bytes(RESERVE_BYTES))
        except OSError as e:
            if e.errno not in FULL_DISK:
                raise
    elif not running and reserve.is_file() and not reserve.is_symlink():
        reserve.unlink()


def outcome_from_summary(run_dir: Path, summary: Mapping[str, Any]) -> Outcome:
    """The outcome a summary records."""
    typed = summary if isinstance(summary, Summary) else Summary.from_dict(summary)
    return Outcome(typed.status, Path(run_dir), typed.error, typed)


def read_outcome(run_dir: Path) -> Outcome:
    """The outcome recorded in ``run_dir``; a missing or unreadable summary is a failed outcome saying so."""
    try:
        summary = read_summary(run_dir)
    except SummaryError as e:
        return Outcome(Status.failed, Path(run_dir), str(e))
    if summary is None:
        return Outcome(Status.failed, Path(run_dir), "the job ended without recording a result (no summary.json)")
    return outcome_from_summary(run_dir, summary)


def record_failure(run_dir: Path, overrides: list[str], reason: str, status: Status = Status.failed) -> Outcome:
    """Record that a job ended for ``reason`` without a result of its own (it never started, or its process died):
    the summary it had, or a new one, with ``status`` and ``reason``. Returns its outcome."""
    try:
        summary = read_summary(run_dir) or Summary(started_at=now())
    except SummaryError:  # unreadable: replaced by what is known
        summary = Summary()
    summary.update(status=status, error=reason, overrides=list(overrides), finished_at=now())
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_summary(run_dir, summary)
    return Outcome(status, Path(run_dir), reason, summary)


def outcome_of(job_return: Any) -> Outcome:
    """The outcome of a sweep's job from the ``JobReturn`` its launcher gave back."""
    from hydra.core.utils import JobStatus

    run_dir = Path(str(getattr(job_return, "working_dir", None) or "."))
    hydra_cfg = getattr(job_return, "hydra_cfg", None)
    if hydra_cfg is not None:
        from omegaconf import OmegaConf

        run_dir = Path(str(OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=run_dir)))
    # private: Hydra's public getter writes "Error executing job" to stderr and raises for a failed job
    value = job_return._return_value
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
