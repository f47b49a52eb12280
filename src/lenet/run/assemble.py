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
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from lenet.core.augment import build_augmentation
from lenet.core.data import Splits, load_dataset, validation_count
from lenet.core.errors import ConfigError, DeviceError
from lenet.core.losses import build_loss
from lenet.core.metrics import ALWAYS, build_metrics, metric_key
from lenet.core.models import build_model
from lenet.core.optim import build_optimizer, build_scheduler
from lenet.run.config import Config, Precision
from lenet.run.job import JobInfo
from lenet.run.loggers import build_loggers, check_loggers
from lenet.run.tracking import Tracking
from lenet.training.callbacks import build_callbacks
from lenet.training.compiled import compile_model
from lenet.training.loop import FitSettings
from lenet.training.state import TrainState

METRIC_KEYS = ["epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds"]  # the harness's
log = logging.getLogger(__name__)


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


@dataclass
class Assembly:
    """What a run trains with: its state, the loop's settings (None when assembled without data) and its row keys."""

    run: TrainState
    settings: Optional[FitSettings]
    row_keys: list[str]


def row_keys_of(cfg: Config, metrics: dict, has_val: bool) -> list[str]:
    """The keys of every metrics.jsonl row of a run: the harness's, then each split's other metrics."""
    splits = (["val"] if has_val else []) + ["test"]
    keys = ["epoch", "train_loss", *(f"{s}_{k}" for s in splits for k in ("loss", "acc")), "lr", "seconds"]
    extra = [metric_key(name, split) for split in splits for name in metrics if name != ALWAYS]
    return keys + extra


def assemble(
    cfg: Config,
    job: Optional[JobInfo],
    config_record: dict[str, Any],
    tracking: Optional[Tracking] = None,
    with_data: bool = True,
) -> Assembly:
    """The run's state (model, optimizer, schedule, callbacks, ...), the loop's settings, and its row keys.

    The one assembler: a run, the preflight check (``with_data=False``, no ``tracking``: on the CPU, no data, no
    loggers) and every member of a fused group are built here. The loggers are started into ``tracking``, which
    finishes them however the run ends. Every setting that selects on a metrics key is checked here.
    """
    device = resolve_device(cfg.device.name) if with_data else torch.device("cpu")
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
    row_keys = row_keys_of(cfg, metrics, has_val=cfg.data.val_size != 0)
    check_selection(cfg, row_keys + callbacks.row_keys(), callbacks, warn=with_data)
    if tracking is None:
        check_loggers(cfg.logger)
    else:  # before the data, so that a logger that cannot start (W&B online) fails first
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
    settings = assemble_data(cfg, job, metrics) if with_data else None
    if settings is not None and settings.val is None and cfg.data.val_size != 0:
        row_keys = row_keys_of(cfg, metrics, has_val=False)  # too few images for the default validation split
    images = len(settings.train) if settings is not None else expected_train_images(cfg)
    scheduler = build_scheduler(
        optimizer, cfg.scheduler, cfg.trainer.epochs, math.ceil(images / cfg.trainer.batch_size), row_keys
    )
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        generator=torch.Generator().manual_seed(cfg.seed),  # shuffling and augmentation; in the checkpoint
        callbacks=callbacks,
        run_dir=job.run_dir if job is not None else None,
        config=config_record,
        row_keys=row_keys + callbacks.row_keys(),
        compiled=compile_model(model) if cfg.trainer.compile and with_data else None,
    )
    return Assembly(state, settings, state.row_keys)


KNOWN_TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "kmnist": 60_000}  # for a check without the data


def expected_train_images(cfg: Config) -> int:
    """The training images a run of ``cfg`` will have, as far as the config says (for a schedule built without data)."""
    if cfg.data.train_size is not None:
        return cfg.data.train_size
    known = KNOWN_TRAIN_SIZES.get(cfg.data.name)
    if known is None or cfg.data.loader:
        return cfg.trainer.batch_size  # unknown until the loader runs: one step per epoch, for the check
    return known - validation_count(cfg.data.val_size, known)


def check_selection(cfg: Config, row_keys: list[str], callbacks: Any, warn: bool) -> None:
    """Every setting that selects on a metrics key names one a row will hold; selecting on the test set is said.

    Such settings are ``trainer.best``, ``scheduler.monitor`` and the ``monitor`` attribute of any callback.
    """
    watched = [("trainer.best", cfg.trainer.best), ("scheduler.monitor", cfg.scheduler.get("monitor"))] + [
        (f"callbacks.{name}.monitor", getattr(callback, "monitor"))
        for name, callback in callbacks.items()
        if isinstance(getattr(callback, "monitor", None), str)
    ]
    for setting, key in watched:
        if key is None:
            continue
        if key not in row_keys and setting == "trainer.best" and key.startswith("val_") and cfg.data.val_size == 0:
            continue  # nothing to select on: no best epoch (lenet.run.lifecycle.best_key says so)
        if key not in row_keys:
            hint = (
                "; data.val_size=0 leaves no validation split: set data.val_size, or name a test_* key explicitly "
                "(selection on the test set)"
                if key.startswith("val_") and cfg.data.val_size == 0
                else ""
            )
            raise ConfigError(f"{setting}={key} is not a key of the metrics rows ({', '.join(row_keys)}){hint}")
        if warn and key.startswith("test_"):
            warn_test_selection(setting, key)


def warn_test_selection(setting: str, key: str) -> None:
    """One line: a setting selects on the test set, so what it selects is optimistically biased."""
    log.warning(
        "%s=%s selects on the test set: what it chooses is optimistically biased; choose on a val_* key for results "
        "a reviewer would accept",
        setting,
        key,
    )


def assemble_data(cfg: Config, job: JobInfo, metrics: dict) -> FitSettings:
    """The loop's settings for ``cfg``: its data, read and preprocessed onto the device once, and the trainer's."""
    _freeze_imports()
    splits = _dataset(cfg.data, resolve_path(cfg.data.root, job.cwd), resolve_device(cfg.device.name))
    return FitSettings(
        train=splits.train,
        val=splits.val,
        test=splits.test,
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size,
        bf16=cfg.trainer.precision == Precision.bf16,
        augment=build_augmentation(cfg.data.augment.value, dataclasses.asdict(cfg.data.distort)),
        metrics=metrics,
        cuda_graphs=str(cfg.trainer.cuda_graphs).lower(),  # YAML reads true and false as booleans
    )


_global_rng = threading.Lock()  # runs on threads of one process (lenet.run.fused_life) seed and draw it one at a time
_datasets: dict[str, Splits] = {}  # the data this process loaded, by what decides its tensors: loaded once
_datasets_lock = threading.Lock()


def _dataset(data: Any, root: Path, device: torch.device) -> Splits:
    """The splits of ``data``, read and preprocessed once per process (the jobs only read them)."""
    key = json.dumps(
        [dataclasses.asdict(data) | {"augment": None, "distort": None}, str(root.resolve()), str(device)],
        sort_keys=True,
        default=str,
    )
    with _datasets_lock:
        if key not in _datasets:
            _datasets.clear()  # one dataset at a time: a sweep over datasets does not pile them up in memory
            _datasets[key] = load_configured(data, root, device, data.download)
        return _datasets[key]


def load_configured(data: Any, root: Path, device: torch.device, download: bool) -> Splits:
    """The splits the ``data`` config describes, read from ``root`` onto ``device``."""
    return load_dataset(
        data.name,
        root,
        download,
        data.resize.value,
        data.mean,
        data.std,
        device,
        train_size=data.train_size,
        val_size=data.val_size,
        test_size=data.test_size,
        size=data.size,
        num_classes=data.num_classes,
        loader=data.loader,
    )
