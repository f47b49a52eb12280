"""The typed config: dataclasses registered in Hydra's ConfigStore as the schema of every group.

The YAML files in ``conf/`` hold the values and extend the ``schema_*`` nodes stored here (Hydra's
structured-config example 5.1), so an unknown key or a wrong type fails before any work is done.
Ranges that a type cannot express are checked by ``validate``. The model, loss, optimizer, scheduler
and loggers are pluggable: their options name a ``_target_`` and carry that callable's own arguments,
which the callable itself checks when it is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet.core.errors import ConfigError
from lenet.run.identity import RESUME_MAY_CHANGE

MAX_GENERATED_IMAGES = 1_000_000  # data.train_size/val_size/test_size: about 5 KB of memory each, once preprocessed
MAX_IMAGE_SIDE = 512  # data.size: far above a LeNet's input, far below what exhausts memory when preprocessed


class Resize(Enum):
    pad = "pad"  # zero-pad 28x28 to 32x32, as in the 1998 paper
    resize = "resize"  # bilinear resize to 32x32, as torchvision's Resize(32)


class Augment(Enum):
    none = "none"
    distort = "distort"  # the 1998 paper's random affine distortions, per image, on the device


@dataclass
class DistortConfig:
    scale: float = 0.1  # relative: 0.9-1.1
    rotation: float = 10.0  # degrees either way
    shear: float = 0.1  # horizontal, as a slope
    translate: float = 2.0  # pixels either way


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16 for forward and loss


class WandbMode(Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class DataConfig:
    name: str = MISSING  # a registered dataset (lenet.data.list_datasets()), or any name with data.loader
    loader: Optional[str] = None  # dotted path to a loader function of your own; null: the registered `name`
    root: str = "data"  # folder holding NAME/raw/*-ubyte[.gz] or the four files; relative to where you started
    download: bool = True  # fetch with torchvision when the files are missing
    resize: Resize = Resize.pad
    size: int = 32  # the model's input side: images are padded or resized to size x size
    num_classes: int = 10  # offered to the model's factory as num_classes; labels must lie in 0..num_classes-1
    mean: List[float] = MISSING  # per channel, of the training pixels in [0, 1]; its length is the channel count
    std: List[float] = MISSING
    augment: Augment = Augment.none  # of the training batches, on the device
    distort: DistortConfig = field(default_factory=DistortConfig)  # the ranges of augment=distort
    # images per split: train_size and test_size subsets of the dataset's (null: all), the same for every run; a
    # loader that generates its images (synthetic) is asked for this many. val_size: drawn from the training images
    # once for everyone (whatever the seed); null: 5,000 or a tenth of them if fewer; 0: no validation split
    train_size: Optional[int] = None
    val_size: Optional[int] = None
    test_size: Optional[int] = None


@dataclass
class DeviceConfig:
    name: str = MISSING  # auto | cpu | cuda | mps
    # torch CPU threads: null, the job's share of the cores (the same whatever the load); N; or probe, the fastest
    # count now (faster on a busy machine, not repeatable); recorded in summary.json, kept on resume
    num_threads: Any = None


@dataclass
class WandbConfig:
    """The typed node of logger=wandb (lenet.run.loggers.WandbLogger's arguments)."""

    _target_: str = "lenet.run.loggers.WandbLogger"
    mode: Optional[WandbMode] = None  # null: $WANDB_MODE if set, else offline
    project: str = "lenet"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the sweep's dir in a multirun
    name: Optional[str] = None  # null: the overrides of the job, e.g. pooling=avg,seed=1
    tags: List[str] = field(default_factory=list)
    log_model: bool = False  # upload the final weights as an artifact
    watch: Optional[Dict[str, Any]] = None  # arguments of wandb.Run.watch(model, ...), e.g. {log: gradients}
    settings: Dict[str, Any] = field(default_factory=dict)  # more wandb.Settings, e.g. {init_timeout: 30}
    finish_timeout: float = 60.0  # seconds a W&B service that stops answering may delay the run's end


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1000
    precision: Precision = Precision.fp32
    compile: bool = False  # torch.compile the model
    cuda_graphs: Any = False  # auto | true | false: capture the training step as a CUDA graph (CUDA only; see conf)
    channels_last: bool = True  # NHWC memory format for the model's activations
    resume: bool = False  # continue from checkpoint.pt in the run dir (pass hydra.run.dir=...)
    progress: Optional[bool] = None  # progress bar; null: only when stderr is a terminal
    metrics: List[str] = field(default_factory=list)  # beyond accuracy: lenet.core.metrics names or dotted paths
    # the metrics key whose best epoch is reported (best_epoch, best_test_acc) and kept (best.pth): min for a loss,
    # else max; a test_* key selects on the test set (said in one warning line); null: no best epoch
    best: Optional[str] = "val_acc"


@dataclass
class Config:
    # pluggable: each option carries its own arguments beside its _target_ (or the model's registry name)
    model: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    data: DataConfig = MISSING
    device: DeviceConfig = MISSING
    logger: Dict[str, Any] = field(default_factory=dict)  # name -> a logger's node (_target_ and its arguments)
    callbacks: Dict[str, Any] = field(default_factory=dict)  # name -> a callback's node: variants of the loop
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0


# the schema of each typed group, stored outside the groups so that `--help` lists only options to choose;
# an option extends its schema with `- /schema_<group>@_here_` in its defaults list
_GROUP_SCHEMAS: dict[str, Any] = {
    "data": DataConfig,
    "device": DeviceConfig,
    "logger_wandb": WandbConfig,
}


def gpus_for(device: str) -> int:
    """GPUs a job asks its cluster for: one when its device is CUDA, none otherwise (``device=auto`` included)."""
    return 1 if device == "cuda" else 0


def register_configs() -> None:
    """Store the schema nodes in Hydra's ConfigStore and the ``lenet_gpus`` resolver; call before composing."""
    if not OmegaConf.has_resolver("lenet_gpus"):
        OmegaConf.register_new_resolver("lenet_gpus", gpus_for)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in _GROUP_SCHEMAS.items():
        cs.store(name=f"schema_{group}", node=node)


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def validate(cfg: Config) -> None:
    """Check the ranges a type cannot express; raise ConfigError naming the key."""
    trainer = cfg.trainer
    _require(trainer.epochs >= 1, "trainer.epochs", ">= 1", trainer.epochs)
    _require(trainer.batch_size >= 1, "trainer.batch_size", ">= 1", trainer.batch_size)
    _require(trainer.eval_batch_size >= 1, "trainer.eval_batch_size", ">= 1", trainer.eval_batch_size)
    _require(
        all(_positive(v) for v in cfg.data.std) and len(cfg.data.std) >= 1,
        "data.std",
        "finite numbers > 0",
        cfg.data.std,
    )
    _require(len(cfg.data.mean) == len(cfg.data.std), "data.mean", "one value per channel, as data.std", cfg.data.mean)
    _require(all(math.isfinite(v) for v in cfg.data.mean), "data.mean", "finite numbers", cfg.data.mean)
    _require(1 <= cfg.data.size <= MAX_IMAGE_SIDE, "data.size", f"1..{MAX_IMAGE_SIDE} (pixels a side)", cfg.data.size)
    _require(cfg.data.num_classes >= 1, "data.num_classes", ">= 1", cfg.data.num_classes)
    limit = MAX_GENERATED_IMAGES
    for key, value, least in (
        ("train_size", cfg.data.train_size, 1),
        ("val_size", cfg.data.val_size, 0),
        ("test_size", cfg.data.test_size, 1),
    ):
        _require(value is None or least <= value <= limit, f"data.{key}", f"null or {least}..{limit}", value)
    graphs = trainer.cuda_graphs
    _require(graphs in ("auto", True, False), "trainer.cuda_graphs", "auto, true or false", graphs)
    _require(
        graphs is not True or cfg.device.name in ("cuda", "auto"),
        "trainer.cuda_graphs",
        "auto or false on a device other than cuda",
        graphs,
    )
    _require(
        not (graphs is True and trainer.compile),
        "trainer.cuda_graphs",
        "auto or false with trainer.compile=true",
        graphs,
    )
    _require(0 <= cfg.seed < 2**63, "seed", "an integer from 0 to 2^63 - 1", cfg.seed)
    threads, most = cfg.device.num_threads, 4 * (os.cpu_count() or 1)
    number = isinstance(threads, int) and not isinstance(threads, bool)
    _require(
        threads is None or threads == "probe" or (number and 1 <= threads <= most),
        "device.num_threads",
        f"null, probe or 1..{most} (4 per core: more only slow a run down)",
        threads,
    )


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    # `+key=value` force-adds keys past the schema, and to_object would silently drop them
    schema = OmegaConf.get_type(node)
    unknown = []
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
        unknown = [f"{prefix}{k}" for k in node.keys() if k not in known]
    for key, child in node.items_ex(resolve=False):
        # a node that holds null (it compares equal to None) has nothing inside to check
        if isinstance(child, DictConfig) and child != None and f"{prefix}{key}" not in unknown:  # noqa: E711
            unknown += _unknown_keys(child, f"{prefix}{key}.")
    return unknown


def to_typed(cfg: DictConfig) -> Config:
    """The composed DictConfig as validated dataclass instances."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"unknown config key {', '.join(unknown)}: not in the schema (see python train.py --cfg job)")
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    assert isinstance(typed, Config)
    validate(typed)
    return typed


# keys that may change between a run and its resumption (lenet.run.identity owns them)
RESUME_IGNORES = RESUME_MAY_CHANGE


def changed_keys(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts, except those under ``ignore``."""

    def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return flat

    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + ".") for i in ignore)]
