"""SIGINT and SIGTERM, from the process's start to its exit: a request to stop at the next step boundary.

``train.py`` installs the handler before anything else is imported, so a signal during start-up,
between the jobs of a sweep or as a run finishes is recorded, never lost and never a traceback: a job
that starts with a signal pending stops at once, a running one after its current step. A second
Ctrl-C stops at once. Under submitit, SIGTERM is left to submitit (a pre-emption); SIGINT stops the job.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator, Optional

from lenet.core.errors import Interrupted
from lenet.run.context import job_context
from lenet.training.callbacks import Callback

log = logging.getLogger(__name__)

pending: Optional[int] = None  # the signal received and not yet acted on
_raising = False  # inside `raising()`: a signal interrupts at once


def _record(signum: int, frame: Any) -> None:
    global pending
    if pending == signal.SIGINT and signum == signal.SIGINT:
        raise KeyboardInterrupt
    pending = signum
    if _raising:
        raise Interrupted(signal.Signals(signum).name)
    log.warning("%s received: stopping after the current step", signal.Signals(signum).name)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Around a wait that may be long (a logger's network start): a signal inside it raises Interrupted at once."""
    global _raising
    _raising = True
    try:
        yield
    finally:
        _raising = False


def _ours() -> tuple[int, ...]:
    """The signals this process records: none outside the main thread (only it receives them), and not SIGTERM
    where the launcher keeps it (submitit reads it as a pre-emption)."""
    if threading.current_thread() is not threading.main_thread():
        return ()
    return (signal.SIGINT,) if job_context().launcher_handles_sigterm else (signal.SIGINT, signal.SIGTERM)


def install() -> None:
    """Record SIGINT and SIGTERM from now on, for the rest of the process."""
    for signum in _ours():
        signal.signal(signum, _record)


def pending_name() -> Optional[str]:
    """The pending signal's name (``SIGINT``, ``SIGTERM``), or None."""
    return None if pending is None else signal.Signals(pending).name


def raise_if_pending() -> None:
    """Raise Interrupted when a signal is pending: one received before a job started stops it at once."""
    if pending is not None:
        raise Interrupted(signal.Signals(pending).name)


class StopOnSignal(Callback):
    """The harness's callback: a pending SIGINT or SIGTERM stops the run at the next step boundary."""

    def on_fit_start(self, run: Any) -> None:
        raise_if_pending()

    def on_epoch_start(self, run: Any) -> None:
        raise_if_pending()

    def on_step_end(self, run: Any, loss: Any) -> None:
        if pending is not None:
            raise Interrupted(signal.Signals(pending).name)


@contextlib.contextmanager
def recorded() -> Iterator[None]:
    """While a job runs: SIGINT and SIGTERM are recorded as requests to stop (whatever was installed meanwhile)."""
    previous = {signum: signal.signal(signum, _record) for signum in _ours()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
