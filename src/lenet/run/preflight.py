"""A config checked as its job would check it, before any folder is made: the schema, and every component built.

The one assembler (``lenet.run.assemble``) builds the model, optimizer, loss, metrics, callbacks and
schedule (on the CPU, without data, loggers or training) and checks every selection key, so that a value
any of them refuses is one line before a run or a sweep starts: a single run that fails here leaves no
folder behind, and the preview launcher shows what each job would say.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, open_dict

from lenet.core.errors import ConfigError
from lenet.run.config import Config, to_typed

if TYPE_CHECKING:
    from lenet.run.assemble import Assembly


def task_config(config: DictConfig) -> DictConfig:
    """A composed config without Hydra's own node: what the job receives."""
    task = config.copy()
    with open_dict(task):
        task.pop("hydra", None)
    return task


def preflight(config: DictConfig) -> tuple[Config, "Assembly"]:
    """The typed config of ``config`` (a job's, with or without Hydra's node) and its assembly by the one assembler
    (on the CPU, without data or loggers): everything a run would build, built once."""
    from omegaconf import OmegaConf

    from lenet.run.assemble import assemble, resolve_device

    task = task_config(config)
    cfg = to_typed(task)
    if resolve_device(cfg.device.name).type != "cuda" and cfg.trainer.cuda_graphs is True:
        raise ConfigError(f"trainer.cuda_graphs=true needs a CUDA device; device={cfg.device.name} found none here")
    record = OmegaConf.to_container(task, resolve=True, enum_to_str=True)
    return cfg, assemble(cfg, None, record, with_data=False)


def check_data(cfg: Config, cwd: Path) -> None:
    """That a single run's dataset is where it says (downloaded there if allowed), before its folder is made."""
    from lenet.core.data import locate_dataset
    from lenet.run.assemble import resolve_path

    locate_dataset(cfg.data.name, resolve_path(cfg.data.root, cwd), cfg.data.download, cfg.data.loader)
