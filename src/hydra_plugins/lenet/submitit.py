"""``hydra/launcher=slurm`` and ``=local``: hydra-submitit-launcher's launchers, one job's death failing only it.

The plugin collects results with ``[job.results()[0] for job in jobs]``, so the first job whose
process died (killed, out of memory, cancelled) ends the sweep in a traceback while the other jobs
run on unobserved. Here each job's result is collected on its own: a job that died is recorded as
failed with submitit's reason, and the sweep's verdict names it. A SIGINT or SIGTERM to the sweep
reaches every job as SIGINT (each stops at its next step and records it); jobs still running 60 s
later are cancelled, and recorded interrupted.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.lenet.failures import failed_job

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
except ImportError:  # without the launchers extra: hydra/launcher=local|slurm say how to get it (lenet.run.extras)
    BaseQueueConf, BaseSubmititLauncher = None, object

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


class _JobByJob(BaseSubmititLauncher):
    parallel_jobs = 1  # jobs of the sweep sharing one machine's cores: one per SLURM allocation
    kill_after = 60.0  # seconds the jobs have to stop after a signal to the sweep before they are cancelled

    def __call__(
        self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> JobReturn:
        """In the job's process: tell the job how it runs, then run it as the plugin does, in the folder it claimed."""
        from hydra.core.utils import setup_globals

        from hydra_plugins.lenet.sweeping import composed_job, run_claimed
        from lenet.run.context import set_job_context

        # submitit may run a timed-out or pre-empted job again; on SLURM it keeps SIGTERM (a pre-emption) for itself
        set_job_context(parallel_jobs=self.parallel_jobs, requeueable=True, launcher_handles_sigterm=self.keeps_sigterm)
        import submitit
        from omegaconf import open_dict

        Singleton.set_state(singleton_state)
        setup_globals()
        job_config = composed_job(self.hydra_context, self.config, sweep_overrides, job_num)
        with open_dict(job_config):
            job_config.hydra.job.id = submitit.JobEnvironment().job_id
        return run_claimed(self.hydra_context, self.task_function, job_config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """As the plugin's ``launch`` (submit the array, wait), collecting each job's result on its own."""
        # the plugin's launch is repeated here up to the submission: it collects the results in one comprehension
        # that ends the sweep at the first dead job, and offers no seam between submitting and collecting
        import submitit

        assert self.config is not None
        params = self.params
        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in specific_init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        init_keys = specific_init_keys | {"submitit_folder"}
        executor.update_parameters(
            **{k if k in base_keys else f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k not in init_keys}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: List[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            jobs = executor.map_array(self, *zip(*job_params))
        except (subprocess.CalledProcessError, OSError) as e:  # sbatch failed: no controller, a refused request, ...
            from lenet.core.errors import UserError

            said = getattr(e, "stderr", None) or getattr(e, "output", None) or str(e)
            said = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
            first = next((line.strip() for line in said.splitlines() if line.strip()), type(e).__name__)
            raise UserError(
                f"the {self._EXECUTOR} jobs could not be submitted ({first[:200]}); is the cluster's controller "
                "running and reachable from here?"
            ) from None
        stopped_by = self._wait(jobs)
        results = [self._result(job, params[2], params[0], stopped_by) for job, params in zip(jobs, job_params)]
        if stopped_by is not None:
            print(f"error: interrupted by {stopped_by}: the jobs were stopped and recorded it", file=sys.stderr)
            raise SystemExit(128 + signal.Signals[stopped_by].value)
        return results

    def _wait(self, jobs: List[Any]) -> Optional[str]:
        """Wait for every job; on a signal to the sweep, stop them all (SIGINT, then killed after kill_after s)."""
        from lenet.run import signals

        try:
            while not all(job.done() for job in jobs):
                if signals.pending is not None:
                    self._stop(jobs, self.kill_after)
                    return signal.Signals(signals.pending).name
                time.sleep(POLL_SECONDS)
        except BaseException:  # a second Ctrl-C, or a bug: no job outlives the sweep
            self._stop(jobs, 0.0)
            raise
        return None

    def _stop(self, jobs: List[Any], grace: float) -> None:
        """Ask every running job to stop at its next step (SIGINT); cancel those still running after ``grace``."""
        running = [job for job in jobs if not job.done()]
        for job in running:
            self._interrupt(job)
        deadline = time.monotonic() + grace
        while any(not job.done() for job in running) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        for job in running:
            if not job.done():
                job.cancel(check=False)

    def _interrupt(self, job: Any) -> None:
        raise NotImplementedError

    def _result(self, job: Any, idx: int, overrides: Sequence[str], stopped_by: Optional[str]) -> JobReturn:
        from lenet.run.outcome import Status

        try:
            return job.results()[0]
        except Exception as e:  # submitit's FailedJobError, UncompletedJobError: the job's process ended early
            lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith("-")]
            if stopped_by is not None:
                reason = f"interrupted by {stopped_by}: the sweep stopped the job"
                return failed_job(self.hydra_context, self.config, idx, overrides, reason, Status.interrupted)
            reason = f"the job's process died ({type(e).__name__}: {lines[0] if lines else 'no reason given'})"
            log.error(f"#{idx} failed: {reason}")
            return failed_job(self.hydra_context, self.config, idx, overrides, reason)


class LocalLauncher(_JobByJob):
    _EXECUTOR = "local"
    keeps_sigterm = False  # no pre-emption here: SIGTERM stops a job, as it stops a run

    def _interrupt(self, job: Any) -> None:
        # private: submitit's public cancel() sends SIGINT, which its local controller does not pass on to the job;
        # SIGTERM to the controller is passed on
        if job._process is not None:
            job._process.send_signal(signal.SIGTERM)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """As the plugin's, the jobs sharing this machine's cores: submitit starts them all at once, so each takes
        the share of the cores the processes launcher would give it (and the same thread count: the same results)."""
        self.parallel_jobs = max(1, len(job_overrides))
        return super().launch(job_overrides, initial_job_idx)


class SlurmLauncher(_JobByJob):
    _EXECUTOR = "slurm"
    keeps_sigterm = True

    def _interrupt(self, job: Any) -> None:
        # SIGINT to the job's steps: it stops at its next step and records it (SIGTERM is submitit's: a pre-emption)
        subprocess.call(
            ["scancel", "--signal=INT", str(job.job_id)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """As the plugin's, reading job states from squeue when the cluster keeps no accounting (no sacct)."""
        if not _accounting_works():
            from submitit.slurm.slurm import SlurmJob

            SlurmJob.watcher = _squeue_watcher(delay_s=SlurmJob.watcher._delay_s)
        return super().launch(job_overrides, initial_job_idx)


def _accounting_works() -> bool:
    """Whether sacct answers on this cluster (it does not without an accounting storage)."""
    try:
        return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _squeue_watcher_class() -> Any:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        """submitit's watcher, asking squeue (jobs seen in the last MinJobAge seconds) in sacct's format.

        Without it, on a cluster without accounting every poll warns that sacct failed, and a job that died
        without a result is never seen to end. submitit has no public seam for the command its watcher runs:
        this overrides its private ``_make_command`` and reads the job ids it tracks (``_registered``,
        ``_finished``), and ``SlurmJob.watcher`` is replaced keeping its ``_delay_s``.
        """

        def _make_command(self) -> Any:
            ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
            if not ids:
                return None
            return [
                "sh",
                "-c",
                'echo "JobID|State|NodeList"; squeue --noheader --states=all --array '
                f'--format="%i|%T|%N" --jobs={",".join(ids)} 2>/dev/null || true',
            ]

    return SqueueWatcher


def _squeue_watcher(delay_s: int) -> Any:  # the class is made late: submitit is imported only when used
    return _squeue_watcher_class()(delay_s=delay_s)
