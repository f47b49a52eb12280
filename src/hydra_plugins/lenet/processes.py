"""``hydra/launcher=joblib`` (or ``=processes``): a sweep's jobs in parallel local processes, one process each.

hydra-joblib-launcher runs jobs in a loky worker pool, where one worker's death (the out-of-memory
killer, SIGKILL) aborts the whole sweep and takes the other workers' jobs with it, and where a SIGTERM
to the sweep leaves the workers running. Here each job is a process of its own
(``python -m hydra_plugins.lenet.job_process``), started ``n_jobs`` at a time: a job whose process dies is recorded
as failed with its reason and the others run on; a SIGINT or SIGTERM to the sweep is passed to every
running job, which stops at its next step and records itself interrupted, and no job starts after
it; the jobs die with the sweep if it is killed (Linux).
"""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides

from hydra_plugins.lenet.failures import failed_job
from hydra_plugins.lenet.sweeping import SetUpLauncher
from lenet.core.errors import ConfigError

log = logging.getLogger(__name__)
POLL_SECONDS = 0.05


@dataclass
class ProcessesLauncherConf:
    _target_: str = "hydra_plugins.lenet.processes.ProcessesLauncher"
    n_jobs: int = -1  # jobs at once; -1: one per CPU core
    kill_after: float = 30.0  # seconds a job has to stop after a signal to the sweep before it is killed


ConfigStore.instance().store(group="hydra/launcher", name="processes", node=ProcessesLauncherConf, provider="lenet")


def _stop(processes: Any, grace: float = 5.0) -> None:
    """SIGTERM to each process still running, then SIGKILL to those still running after ``grace`` seconds."""
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for process in alive:
        if process.poll() is None:
            process.kill()
            process.wait()


def _die_with_parent() -> None:  # runs in the child before exec: SIGTERM when the sweep's process dies
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the sweep's signal handler still passes signals on


class ProcessesLauncher(SetUpLauncher):
    """Runs each job in its own process, ``n_jobs`` at a time."""

    def __init__(self, n_jobs: int = -1, kill_after: float = 30.0, **unknown: Any) -> None:
        if unknown:  # hydra/launcher=joblib names this launcher: joblib's own keys would do nothing here
            raise ConfigError(
                f"the processes launcher (hydra/launcher=processes, alias joblib) takes n_jobs and kill_after, not "
                f"{', '.join(f'hydra.launcher.{k}' for k in unknown)}: drop it"
            )
        super().__init__()
        self.n_jobs, self.kill_after = n_jobs, kill_after

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the jobs, ``n_jobs`` at a time; a signal to the sweep stops them all, and no job starts after it."""
        from lenet.run import signals

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = (os.cpu_count() or 1) if self.n_jobs < 0 else max(1, self.n_jobs)
        log.info(f"Launching {len(job_overrides)} jobs, {slots} at a time, each in its own process, in {sweep_dir}")
        waiting = list(enumerate(job_overrides, start=initial_job_idx))
        running: dict[int, tuple[subprocess.Popen, Path, Sequence[str]]] = {}
        results: dict[int, JobReturn] = {}
        deadline = None  # once the sweep is signalled: when jobs still running are killed
        with tempfile.TemporaryDirectory(dir=sweep_dir.resolve(), prefix=".jobs.") as scratch:
            try:
                while waiting or running:
                    if signals.pending is not None and deadline is None:  # stop: pass it on, start nothing more
                        for process, _, _ in running.values():
                            process.send_signal(signals.pending)
                        waiting, deadline = [], time.monotonic() + self.kill_after
                    if deadline is not None and time.monotonic() > deadline:  # stuck where no step ends: kill
                        for process, _, _ in running.values():
                            process.kill()
                    while waiting and len(running) < slots:
                        idx, overrides = waiting.pop(0)
                        running[idx] = self._start(idx, overrides, slots, Path(scratch))
                    for idx, (process, result, overrides) in list(running.items()):
                        if process.poll() is not None:
                            del running[idx]
                            results[idx] = self._collect(idx, overrides, process.returncode, result, deadline)
                    time.sleep(POLL_SECONDS)
            finally:  # a second Ctrl-C, or a bug: no job outlives the sweep
                _stop(process for process, _, _ in running.values())
        if signals.pending is not None:
            name = signal.Signals(signals.pending).name
            print(
                f"error: interrupted by {name}: the running jobs stopped and recorded it; no job started after",
                file=sys.stderr,
            )
            raise SystemExit(128 + signals.pending)
        return [results[idx] for idx in sorted(results)]

    def _start(self, idx: int, overrides: Sequence[str], slots: int, scratch: Path) -> tuple:
        import cloudpickle

        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        job_file, result = scratch / f"{idx}.job", scratch / f"{idx}.result"
        # the jobs share the cores; a signal to the sweep reaches them through it (passed on in launch)
        context = {"parallel_jobs": slots, "sweep_handles_signals": True}
        with open(job_file, "wb") as f:
            cloudpickle.dump(
                {
                    "idx": idx,
                    "overrides": list(overrides),
                    "hydra_context": self.hydra_context,
                    "config": self.config,
                    "task_function": self.task_function,
                    "singleton_state": Singleton.get_state(),
                    "context": context,
                },
                f,
            )
        process = subprocess.Popen(
            [sys.executable, "-m", "hydra_plugins.lenet.job_process", str(job_file), str(result)],
            start_new_session=True,  # a terminal's Ctrl-C reaches the sweep, which passes it on once
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        return process, result, overrides

    def _collect(
        self, idx: int, overrides: Sequence[str], returncode: int, result: Path, stopping: Optional[float]
    ) -> JobReturn:
        import cloudpickle

        from lenet.run import signals
        from lenet.run.outcome import Status

        if result.is_file():
            with open(result, "rb") as f:
                return cloudpickle.load(f)
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
        if stopping is not None:  # the sweep stopped it
            name = signal.Signals(signals.pending).name
            reason = f"interrupted by {name}: the job did not stop within {self.kill_after:g} s and was killed ({how})"
            return failed_job(self.hydra_context, self.config, idx, overrides, reason, Status.interrupted)
        reason = f"the job's process died ({how}; the out-of-memory killer sends SIGKILL)"
        log.error(f"#{idx} failed: {reason}")
        return failed_job(self.hydra_context, self.config, idx, overrides, reason)
