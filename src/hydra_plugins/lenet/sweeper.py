"""``hydra/sweeper=lenet_basic`` (lenet's default, chosen by ``hparams_search=none``): Hydra's basic sweeper,
reading each job's outcome.

Hydra's ``BasicSweeper`` raises the first failed job's exception once its batch has run, which ends
the sweep in a traceback without a word on the other jobs. This one composes every job before any runs
(a typo in one combination leaves nothing behind), gives each job its folder by its overrides
(``sweeping.assign_folders``), runs them all, and ends with the verdict (``verdict.report``): the sweep
exits non-zero naming each job that did not complete.
"""

import logging
import time
from dataclasses import dataclass
from typing import List, Sequence

# Hydra's basic sweeper has no public import path; lenet's extends it (its split_arguments: every combination)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from hydra_plugins.lenet import verdict
from hydra_plugins.lenet.sweeping import assign_folders, composed_subdirs, runs_jobs, start_sweep

log = logging.getLogger(__name__)


@dataclass
class LenetBasicSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.lenet.sweeper.LenetBasicSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="lenet_basic", node=LenetBasicSweeperConf, provider="lenet")


class LenetBasicSweeper(BasicSweeper):
    """The cartesian product of the sweep's values, in batches; the verdict from every job's outcome."""

    def sweep(self, arguments: List[str]) -> Sequence[JobReturn]:
        """Run every job (a failed one does not stop the others); print the verdict; exit 1 if one did not complete."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (self.params or {}).items()]  # the sweeper's params as overrides
        batches = self.split_arguments(parser.parse_overrides(params + arguments), self.max_batch_size)
        jobs = [list(job) for batch in batches for job in batch]
        tic = time.perf_counter()
        wanted = composed_subdirs(self.hydra_context, self.config, jobs)  # before any job runs or file is written
        log.debug(f"Composed the configs of {len(jobs)} jobs in {time.perf_counter() - tic:0.2f} s")
        if not runs_jobs(self.launcher):
            return self.launcher.launch(jobs, initial_job_idx=0)
        sweep_dir = start_sweep(self.config, self.launcher)
        resuming = bool(OmegaConf.select(self.config, "trainer.resume", default=False))
        assigned = assign_folders(sweep_dir, jobs, wanted, resuming)
        returns: List[JobReturn] = []
        try:
            for batch in batches:
                returns += self.launcher.launch(assigned[len(returns) : len(returns) + len(batch)], len(returns))
        except (SystemExit, KeyboardInterrupt):  # a signal stopped the sweep: what each job got to, and how to go on
            verdict.interrupted(sweep_dir, assigned)
            raise
        verdict.report(sweep_dir, returns)
        return returns
