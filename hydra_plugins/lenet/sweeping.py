"""What lenet's sweepers do around their jobs: claim the sweep dir and record what it sweeps, before any job.

A launcher that runs nothing (``runs_jobs = False``: the preview) leaves the sweep dir alone.
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lenet.run.config import RESUME_IGNORES
from lenet.run.folders import claim_sweep_dir
from lenet.run.hydra_callbacks import ensure_writable
from lenet.run.sweep_dir import sweep_definition, swept_keys, write_sweep_file


def runs_jobs(launcher: Any) -> bool:
    """Whether ``launcher`` runs the jobs it is given (the preview launcher says it does not)."""
    return bool(getattr(launcher, "runs_jobs", True))


def start_sweep(config: DictConfig, launcher: Any) -> Path:
    """Claim the sweep dir (a dated one of its own, a named one only to resume its sweep) and record the sweep."""
    params_node = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    space = OmegaConf.to_container(params_node) if params_node is not None else {}
    if runs_jobs(launcher):
        definition = sweep_definition(config.hydra.overrides.task, space, RESUME_IGNORES)
        claim_sweep_dir(config, definition)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        ensure_writable(sweep_dir, "hydra.sweep.dir")
        write_sweep_file(sweep_dir, swept_keys(config.hydra.overrides.task, space), definition)
    return Path(str(config.hydra.sweep.dir))
