"""``hydra/launcher=slurm`` and ``=local``: hydra-submitit-launcher's launchers, one job's death failing only it.

The plugin collects results with ``[job.results()[0] for job in jobs]``, so the first job whose
process died (killed, out of memory, cancelled) ends the sweep in a traceback while the other jobs
run on unobserved. Here each job's result is collected on its own: a job that died is recorded as
failed with submitit's reason, and the sweep's verdict names it.
"""

import logging
import os
from pathlib import Path
from typing import Any, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from hydra_plugins.lenet.failures import failed_job

log = logging.getLogger(__name__)


class _JobByJob(BaseSubmititLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """As the plugin's ``launch`` (submit the array, wait), collecting each job's result on its own."""
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
        jobs = executor.map_array(self, *zip(*job_params))
        return [self._result(job, params[2], params[0]) for job, params in zip(jobs, job_params)]

    def _result(self, job: Any, idx: int, overrides: Sequence[str]) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as e:  # submitit's FailedJobError, UncompletedJobError: the job's process died
            lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith("-")]
            reason = f"the job's process died ({type(e).__name__}: {lines[0] if lines else 'no reason given'})"
            log.error(f"#{idx} failed: {reason}")
            return failed_job(self.hydra_context, self.config, idx, overrides, reason)


class LocalLauncher(_JobByJob):
    _EXECUTOR = "local"


class SlurmLauncher(_JobByJob):
    _EXECUTOR = "slurm"
