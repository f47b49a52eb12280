"""``python train.py -m ... hydra/launcher=preview``: list the jobs a sweep would run, and check each config.

Nothing runs and no folder is made (lenet's sweepers write nothing for a launcher that runs no jobs). Each job's
config is composed as the real launcher composes it and checked as the job checks it (``lenet.run.preflight``: the
schema, and the model, optimizer, loss, schedule and callbacks built), so a bad combination shows before the sweep.
"""

import sys
from dataclasses import dataclass
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from hydra_plugins.lenet.sweeping import SetUpLauncher


@dataclass
class PreviewLauncherConf:
    _target_: str = "hydra_plugins.lenet.preview.PreviewLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="preview", node=PreviewLauncherConf, provider="lenet")


class PreviewLauncher(SetUpLauncher):
    """Prints one line per job: its number, its overrides, and whether its config is valid."""

    runs_jobs = False  # lenet's sweepers then claim no sweep dir and write nothing

    def __init__(self) -> None:
        super().__init__()
        self.invalid = 0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lenet.run.preflight import preflight

        assert self.config is not None and self.hydra_context is not None
        configs = []
        for offset, overrides in enumerate(job_overrides):
            try:
                configs.append(self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)))
                preflight(configs[-1])
                verdict = ""
            except Exception as e:  # a bad combination: say so and list the others
                self.invalid += 1
                verdict = f"  <- invalid: {str(e).strip().splitlines()[0]}"
            print(f"#{initial_job_idx + offset}: {' '.join(overrides) or '(no overrides)'}{verdict}")
        if self.invalid:
            print(f"error: {self.invalid} of {len(job_overrides)} jobs have an invalid config", file=sys.stderr)
            raise SystemExit(1)
        print(_fused_groups(configs, initial_job_idx))
        print(f"{len(job_overrides)} jobs; run them without hydra/launcher=preview")
        return []


def _fused_groups(configs: Sequence[DictConfig], first: int) -> str:
    """How hydra/launcher=fused would train these jobs: which share a program."""
    from hydra_plugins.lenet.fused import group_key, groups_of

    groups = groups_of([group_key(c) for c in configs], group_size=64)
    shown = " | ".join(",".join(f"#{first + i}" for i in g) for g in groups)
    return f"with hydra/launcher=fused: {len(groups)} programs ({shown})"
