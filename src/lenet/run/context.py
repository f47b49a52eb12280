"""What the launcher running a job tells it, explicitly: the job's share of the machine and who handles signals.

lenet's launchers set it in the job's process before Hydra runs the job (``set_job_context``); a job
run by Hydra's basic launcher, or as a single run, has the default. The job reads nothing else about
its launcher: no names, classes or environment variables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class JobContext:
    """How a job is run."""

    parallel_jobs: int = 1  # jobs of its sweep sharing this machine's cores at once
    requeueable: bool = False  # the launcher may run it again (time-out, pre-emption): it continues from its checkpoint
    launcher_handles_sigterm: bool = False  # SIGTERM is the launcher's (submitit's: a pre-emption); SIGINT stays ours
    sweep_handles_signals: bool = False  # a worker of a parallel sweep: a signal after the job ended is the sweep's


_context = JobContext()


def job_context() -> JobContext:
    """The context of the job running in this process."""
    return _context


def set_job_context(**settings: object) -> JobContext:
    """Set (some fields of) this process's job context; returns it."""
    global _context
    _context = dataclasses.replace(_context, **settings)
    return _context
