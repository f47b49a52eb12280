"""From a run's typed config to what it trains with: a ``TrainState``, the loop's settings and the loggers.

The pieces are built in the order a wrong setting should fail in: the device, the model and the
optimizer, the loss, the metrics, the callbacks and the loggers first (no data read yet), then the
data and the schedule, which needs the data's length.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import math
import threading
from pathlib import Path
from typing import Any

import torch

from lenet.core.augment import build_augmentation
from lenet.core.data import load_dataset
from lenet.core.errors import DeviceError
from lenet.core.losses import build_loss
from lenet.core.metrics import build_metrics, metric_key
from lenet.core.models import build_model
from lenet.core.optim import build_optimizer, build_scheduler
from lenet.run.config import Config, Precision
from lenet.run.job import JobInfo
from lenet.run.loggers import build_loggers
from lenet.run.tracking import Tracking
from lenet.train.callbacks import build_callbacks
from lenet.train.compiled import compile_model
from lenet.train.loop import FitSettings
from lenet.train.state import TrainState

METRIC_KEYS = ["epoch", "train_loss", "test_loss", "test_acc", "lr", "seconds"]  # of every metrics.jsonl row


def resolve_device(name: str) -> torch.device:
    """The torch device for ``device=name``; an unavailable one raises DeviceError."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise DeviceError(
            f"device={name} was asked for but is not available on this machine; use device=auto or device=cpu"
        )
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def resolve_path(path: str, cwd: Path) -> Path:
    """``path`` as given, relative to ``cwd`` (where the user started) unless absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else cwd / p


_imports_frozen = False


def _freeze_imports() -> None:
    """Exempt what the imports made from the cyclic garbage collector, once per process.

    torch's, Hydra's and the loggers' modules make about 10^5 objects, which the collector would
    otherwise walk on each full collection during training and once more at exit. ``torch.optim``
    imports ``torch._dynamo`` when the first optimizer is built: import it now so that its objects are
    exempt too. Before any job's data, so that only a first job's few small objects are kept out of it.
    """
    global _imports_frozen
    if not _imports_frozen:
        importlib.import_module("torch._dynamo")
        gc.freeze()
        _imports_frozen = True


def assemble(
    cfg: Config, job: JobInfo, config_record: dict[str, Any], tracking: Tracking
) -> tuple[TrainState, FitSettings]:
    """The run's state (model, optimizer, schedule, callbacks, ...) and the loop's settings.

    The loggers are started into ``tracking``, which finishes them however the run ends.
    """
    device = resolve_device(cfg.device.name)
    with _global_rng:  # the model's initial weights, drawn from the global generator seeded for this run alone
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, in_channels=len(cfg.data.mean), num_classes=cfg.data.num_classes)
    model = model.to(device)
    if cfg.trainer.channels_last:  # NHWC: faster convolution and pooling kernels on the CPU
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optimizer, device)
    loss_fn = build_loss(cfg.loss)
    metrics = build_metrics(list(cfg.trainer.metrics))
    callbacks = build_callbacks(cfg.callbacks)
    # before the data, so that a logger that cannot start (W&B online without credentials) fails first
    tracking.loggers = build_loggers(
        cfg.logger,
        {
            "run_dir": job.run_dir,
            "config": config_record,
            "sweep": job.sweep_name,
            "label": job.label or None,
            "model": model,
        },
    )
    settings = assemble_data(cfg, job, metrics)
    if cfg.trainer.compile:
        settings.forward = compile_model(model)
    steps_per_epoch = math.ceil(len(settings.train) / cfg.trainer.batch_size)
    row_keys = METRIC_KEYS + [metric_key(name) for name in metrics if metric_key(name) not in METRIC_KEYS]
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch, row_keys)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(cfg.seed),  # shuffling and augmentation; in the checkpoint
        callbacks=callbacks,
        run_dir=job.run_dir,
        config=config_record,
        row_keys=row_keys + callbacks.row_keys(),
    )
    return state, settings


def assemble_data(cfg: Config, job: JobInfo, metrics: dict) -> FitSettings:
    """The loop's settings for ``cfg``: its data, read and preprocessed onto the device once, and the trainer's."""
    _freeze_imports()
    train, test = _dataset(cfg.data, resolve_path(cfg.data.root, job.cwd), resolve_device(cfg.device.name))
    return FitSettings(
        train=train,
        test=test,
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size,
        bf16=cfg.trainer.precision == Precision.bf16,
        augment=build_augmentation(cfg.data.augment.value, dataclasses.asdict(cfg.data.distort)),
        metrics=metrics,
        cuda_graphs=str(cfg.trainer.cuda_graphs).lower(),  # YAML reads true and false as booleans
    )


_global_rng = threading.Lock()  # runs on threads of one process (lenet.run.fused_life) seed and draw it one at a time
_datasets: dict[str, tuple] = {}  # the data this process loaded, by what decides its tensors: loaded once
_datasets_lock = threading.Lock()


def _dataset(data: Any, root: Path, device: torch.device) -> tuple:
    """The train and test splits of ``data``, read and preprocessed once per process (the jobs only read them)."""
    key = json.dumps(
        [dataclasses.asdict(data) | {"augment": None, "distort": None}, str(root.resolve()), str(device)],
        sort_keys=True,
        default=str,
    )
    with _datasets_lock:
        if key not in _datasets:
            _datasets.clear()  # one dataset at a time: a sweep over datasets does not pile them up in memory
            _datasets[key] = load_dataset(
                data.name,
                root,
                data.download,
                data.resize.value,
                data.mean,
                data.std,
                device,
                synthetic_sizes=(data.train_size, data.test_size),
                size=data.size,
                num_classes=data.num_classes,
                loader=data.loader,
            )
        return _datasets[key]
