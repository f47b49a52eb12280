"""``hydra/launcher=lenet_basic`` (lenet's default): Hydra's basic launcher, one job after another in this process.

As Hydra's, but each job's folder is claimed before Hydra writes into it: held while the job runs,
and refused (the job fails, the folder untouched) when another process holds it or it holds another
job or someone else's files.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals

from hydra_plugins.lenet.sweeping import SetUpLauncher, composed_job, run_claimed

log = logging.getLogger(__name__)


@dataclass
class SerialLauncherConf:
    _target_: str = "hydra_plugins.lenet.serial.SerialLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="lenet_basic", node=SerialLauncherConf, provider="lenet")


class SerialLauncher(SetUpLauncher):
    """Runs the jobs one after another in this process, each in the folder it claimed."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run every job; a job whose folder cannot be claimed fails without running."""
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: List[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_config = composed_job(self.hydra_context, self.config, overrides, idx)
            runs.append(run_claimed(self.hydra_context, self.task_function, job_config))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
