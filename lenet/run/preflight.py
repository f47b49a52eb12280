"""A config checked as its job would check it, before any folder is made: the schema, and every component built.

The model, optimizer, loss, metrics, callbacks and schedule are built (on the CPU, without data, loggers
or training), so that a value any of them refuses is one line before a run or a sweep starts: a single
run that fails here leaves no folder behind, and the preview launcher shows what each job would say.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, open_dict

from lenet.core.errors import ConfigError
from lenet.run.config import Config, to_typed

KNOWN_TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "kmnist": 60_000}  # for the schedule's length


def task_config(config: DictConfig) -> DictConfig:
    """A composed config without Hydra's own node: what the job receives."""
    task = config.copy()
    with open_dict(task):
        task.pop("hydra", None)
    return task


def preflight(config: DictConfig) -> Config:
    """The typed config of ``config`` (a job's, with or without Hydra's node), every component built once."""
    import torch

    from lenet.core.losses import build_loss
    from lenet.core.metrics import build_metrics, metric_key
    from lenet.core.models import build_model
    from lenet.core.optim import build_optimizer, build_scheduler
    from lenet.run.assemble import METRIC_KEYS, resolve_device
    from lenet.train.callbacks import build_callbacks

    cfg = to_typed(task_config(config))
    if resolve_device(cfg.device.name).type != "cuda" and cfg.trainer.cuda_graphs is True:
        raise ConfigError(f"trainer.cuda_graphs=true needs a CUDA device; device={cfg.device.name} found none here")
    model = build_model(cfg.model, in_channels=len(cfg.data.mean), num_classes=cfg.data.num_classes)
    optimizer = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    build_loss(cfg.loss)
    metrics = build_metrics(list(cfg.trainer.metrics))
    build_callbacks(cfg.callbacks)
    images = KNOWN_TRAIN_SIZES.get(cfg.data.name, cfg.data.train_size)
    row_keys = METRIC_KEYS + [metric_key(name) for name in metrics]
    build_scheduler(optimizer, cfg.scheduler, cfg.trainer.epochs, math.ceil(images / cfg.trainer.batch_size), row_keys)
    return cfg
