"""The Hydra adapter: run the job Hydra composed and end it as its kind of run needs.

A single run ends a failure in one ``error:`` line and a non-zero exit; a bug (an exception that is not a
``UserError``: in lenet's code or the user's own) keeps its traceback in the run's train.log, and the line
names it and where it was raised. A job of a sweep raises ``JobFailed``, so that Hydra records it as
``JobStatus.FAILED`` with its error and the other jobs go on; a completed one returns its ``Outcome``. A
signal stops a sweep: it exits.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from lenet.core.errors import Interrupted, UserError
from lenet.run import signals
from lenet.run.checkpoint import CHECKPOINT_FILE
from lenet.run.config import to_typed
from lenet.run.context import job_context
from lenet.run.folders import holding
from lenet.run.job import JobInfo
from lenet.run.lifecycle import run_job
from lenet.run.outcome import JobFailed, Outcome, Status, record_failure, status_of
from lenet.run.sweep_dir import read_sweep_record

log = logging.getLogger(__name__)


def run_from_hydra(cfg: DictConfig) -> Outcome:
    """Run the job Hydra composed; its outcome (a job of a sweep that did not complete raises JobFailed)."""
    job = JobInfo.from_hydra()
    label = _JobLabel(job.label) if job.multirun and job.label else None
    handlers = _console_handlers() if label else []
    for handler in handlers:
        handler.addFilter(label)
    try:
        return _run_and_report(cfg, job)
    finally:
        for handler in handlers:
            handler.removeFilter(label)


def _run_and_report(cfg: DictConfig, job: JobInfo) -> Outcome:
    try:
        # held already by the run's claim or by lenet's launchers; by the job itself under any other launcher
        with holding(job.run_dir, "hydra.sweep.subdir" if job.multirun else "hydra.run.dir"):
            try:
                typed = to_typed(cfg)
            except UserError as e:
                _failed_summary(job, str(e))
                raise
            outcome = run_job(typed, job, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    except (Interrupted, KeyboardInterrupt) as e:
        name = e.signal_name if isinstance(e, Interrupted) else "SIGINT"
        message = interrupted_message(name, job.run_dir, job.sweep_dir)
        _to_log_file(message)
        print(message, file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name].value) from None
    except UserError as e:
        if job.multirun:
            log.error("job failed: %s", e)
            raise JobFailed(Outcome(Status.failed, job.run_dir, str(e))) from None
        _to_log_file(f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as e:
        if job.multirun:
            log.exception("job failed")
            raise JobFailed(Outcome(Status.failed, job.run_dir, status_of(e)[1])) from None
        _to_log_file("the run failed on a bug; its traceback:", exc_info=True)
        print(
            f"error: {bug_line(e)}; the run failed on a bug: its traceback is in {job.run_dir / 'train.log'}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    name = signals.pending_name()
    if name and not job_context().sweep_handles_signals:
        message = f"error: interrupted by {name} as the run finished: it completed (results in {job.run_dir})"
        _to_log_file(message)
        print(f"{message}; nothing more runs", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name].value)
    return outcome


def _failed_summary(job: JobInfo, error: str) -> None:
    """Record a job that failed before training could start (its config did not validate)."""
    record_failure(job.run_dir, job.overrides, error)


def resume_command(run_dir: Path) -> str:
    """The command that continues a single run, as a sweep's stop prints its own: nothing else retyped."""
    return f"python train.py trainer.resume=true hydra.run.dir={shlex.quote(str(run_dir))}"


def bug_line(error: BaseException) -> str:
    """A bug in one line: the exception, and where it was raised (the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (raised in {frames[-1].filename}:{frames[-1].lineno}, {frames[-1].name})" if frames else ""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}{where}"


def interrupted_message(signal_name: str, run_dir: Path, sweep_dir: Optional[Path] = None) -> str:
    """The line an interrupted run ends with: how to continue it (a sweep's job: its sweep), or that nothing can be."""
    record = read_sweep_record(sweep_dir) if sweep_dir is not None else None
    command = record.command if record is not None else None
    if command:
        return (
            f"error: interrupted by {signal_name}; {run_dir} keeps what it finished; continue the sweep with: {command}"
        )
    if (run_dir / CHECKPOINT_FILE).is_file():
        kept = (
            f"the checkpoint of the last finished epoch is kept in {run_dir}; "
            f"continue it with: {resume_command(run_dir)}"
        )
    else:
        kept = "no epoch had finished, so there is no checkpoint to continue from; run it again to start over"
    return f"error: interrupted by {signal_name}; {kept}"


class _JobLabel(logging.Filter):
    """Prefixes a sweep job's console lines with its label, so that parallel jobs' lines can be told apart."""

    def __init__(self, label: str):
        super().__init__()
        self.prefix = f"[{label}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = f"{self.prefix}{record.msg}"
        return True


def _console_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]


def _to_log_file(message: str, exc_info: bool = False) -> None:
    """Write an error into the run's train.log only: the console gets it as the ``error:`` line."""
    record = logging.getLogger(__name__).makeRecord(
        __name__, logging.ERROR, __file__, 0, message, None, sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
