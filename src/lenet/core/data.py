"""Datasets as tensors: a registry of loaders, and preprocessing once onto the device (IDX files: ``lenet.core.idx``).

A dataset is one loader function registered with ``@register_dataset`` (or named by ``data.loader``,
a dotted path) that returns ``{"train": (images, labels), "test": (images, labels)}``: uint8 images
``(N, H, W)`` or ``(N, H, W, C)`` and integer labels. Its YAML holds the per-channel mean and std,
the input size and the number of classes; the loader is called with those of ``root``, ``download``,
``train_size`` and ``test_size`` that it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from lenet.core.errors import ConfigError, DataError, UserError
from lenet.core.factory import accepted_arguments
from lenet.core.idx import TORCHVISION_FOLDERS, load_idx_split, locate_raw
from lenet.core.registry import import_function, register

IMAGE_SIDE = 32  # LeNet-5's input: 28x28 digits centred in a 32x32 field
PREPROCESS_CHUNK = 1024  # images per preprocessing pass: ~4 MB of float32 intermediates


@dataclass
class Split:
    """One split of a dataset as tensors on the training device."""

    images: torch.Tensor  # (N, C, size, size) float32, normalised
    labels: torch.Tensor  # (N,) int64
    image_size: tuple[int, int] = (28, 28)  # (H, W) of the images as the dataset holds them, before preprocessing

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- synthetic digits

# seven-segment strokes (row0, row1, col0, col1) on a 28x28 canvas, centred
_SEGMENTS = {
    "top": (5, 7, 9, 19),
    "mid": (13, 15, 9, 19),
    "bottom": (21, 23, 9, 19),
    "upper_left": (5, 15, 9, 11),
    "upper_right": (5, 15, 17, 19),
    "lower_left": (13, 23, 9, 11),
    "lower_right": (13, 23, 17, 19),
}
_DIGIT_SEGMENTS = [
    ("top", "bottom", "upper_left", "upper_right", "lower_left", "lower_right"),
    ("upper_right", "lower_right"),
    ("top", "mid", "bottom", "upper_right", "lower_left"),
    ("top", "mid", "bottom", "upper_right", "lower_right"),
    ("mid", "upper_left", "upper_right", "lower_right"),
    ("top", "mid", "bottom", "upper_left", "lower_right"),
    ("top", "mid", "bottom", "upper_left", "lower_left", "lower_right"),
    ("top", "upper_right", "lower_right"),
    ("top", "mid", "bottom", "upper_left", "upper_right", "lower_left", "lower_right"),
    ("top", "mid", "bottom", "upper_left", "upper_right", "lower_right"),
]


def make_synthetic(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` digits-like 28x28 uint8 images: seven-segment digits, shifted, dimmed and noisy."""
    rng = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    for digit, segments in enumerate(_DIGIT_SEGMENTS):
        for name in segments:
            r0, r1, c0, c1 = _SEGMENTS[name]
            templates[digit, r0:r1, c0:c1] = 1.0
    labels = rng.integers(0, 10, size=size)
    shifts = rng.integers(-2, 3, size=(size, 2))
    images = np.empty((size, 28, 28), dtype=np.float32)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
        images[i] = np.roll(templates[label], (dy, dx), axis=(0, 1))
    images *= rng.uniform(0.5, 1.0, size=(size, 1, 1))  # stroke intensity
    images += rng.normal(0.0, 0.2, size=images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


# ----------------------------------------------------------------------------- tensors


def resize_matrix(size: int, new_size: int) -> torch.Tensor:
    """(new_size, size) weights of F.interpolate's antialiased bilinear resize along one axis."""
    one_pixel_images = torch.eye(size).view(size, 1, 1, size)
    resized = F.interpolate(one_pixel_images, size=(1, new_size), mode="bilinear", align_corners=False, antialias=True)
    return resized.view(size, new_size).t()


def _per_channel(values: Union[float, Sequence[float]], channels: int, key: str) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) != channels:
        raise DataError(f"{key} has {len(values)} values but the images have {channels} channels: give one per channel")
    return values


def preprocess(
    images: np.ndarray,
    resize: str,
    mean: Union[float, Sequence[float]],
    std: Union[float, Sequence[float]],
    device: torch.device,
    size: int = IMAGE_SIDE,
) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> normalised float32 (N, C, size, size) on ``device``, by zero padding or bilinear resize."""
    pixels = torch.from_numpy(images).to(device)
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    channels, height, width = pixels.shape[1:]
    means, stds = _per_channel(mean, channels, "data.mean"), _per_channel(std, channels, "data.std")
    if resize == "pad":  # 1998 paper: the 28x28 digit centred in a 32x32 field of background
        if height > size or width > size:
            raise DataError(
                f"the images are {height}x{width}, larger than data.size={size}: padding cannot fit them; "
                "set data.resize=resize (or a larger data.size for a model that takes it)"
            )
        top, left = (size - height) // 2, (size - width) // 2
        padding = (left, size - width - left, top, size - height - top)

        def transform(x):
            return F.pad(x, padding)
    elif resize == "resize":  # as torchvision's Resize(32): antialiased bilinear
        # one matrix product per axis, (32, 28) @ x @ (28, 32), with F.interpolate's weights: faster than it
        rows = resize_matrix(height, size).to(device)
        cols = resize_matrix(width, size).to(device).t()

        def transform(x):
            return rows @ x @ cols
    else:
        raise ValueError(f"resize must be 'pad' or 'resize', got {resize!r}")
    if channels == 1:  # plain numbers: the bits the harness always had

        def normalise(x):
            return x.sub_(means[0]).div_(stds[0])
    else:
        mean_t = torch.tensor(means, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(stds, device=device).view(1, -1, 1, 1)

        def normalise(x):
            return x.sub_(mean_t).div_(std_t)

    out = torch.empty(len(pixels), channels, size, size, device=device)
    # a chunk at a time into the final tensor: the same bits as whole-set passes, with far less peak memory
    for start in range(0, len(pixels), PREPROCESS_CHUNK):
        chunk = pixels[start : start + PREPROCESS_CHUNK].float().div_(255.0)
        out[start : start + PREPROCESS_CHUNK] = normalise(transform(chunk))
    return out


# ----------------------------------------------------------------------------- the registry

Loader = Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]
_DATASETS: dict[str, Loader] = {}


def register_dataset(fn: Loader) -> Loader:
    """Register a dataset loader under its function's name; a duplicate name raises."""
    return register(_DATASETS, "dataset", fn.__name__, fn)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_DATASETS)


def get_loader(name: str, loader: Optional[str] = None) -> Loader:
    """The loader a dotted ``loader`` path imports, else the registered dataset ``name``."""
    if loader:
        return import_function(loader, "data.loader")
    if name not in _DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(list_datasets())}, or set data.loader to a dotted path"
        )
    return _DATASETS[name]


def _idx_dataset(name: str) -> Loader:
    def load(root: Path, download: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        files = locate_raw(root, name, download)
        return {split: load_idx_split(*paths) for split, paths in files.items()}

    load.__name__ = load.__qualname__ = name
    load.__doc__ = f"{name} from its four IDX files (torchvision's layout or a flat folder), downloaded if allowed."
    load.locate = lambda root, download: locate_raw(root, name, download)  # type: ignore[attr-defined]
    return load


for _name in TORCHVISION_FOLDERS:
    register_dataset(_idx_dataset(_name))


@register_dataset
def synthetic(train_size: int, test_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generated seven-segment digits: no files, no network."""
    return {"train": make_synthetic(train_size, seed=1), "test": make_synthetic(test_size, seed=2)}


def _checked_labels(labels: np.ndarray, num_classes: int, name: str, split: str) -> torch.Tensor:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"dataset {name}: {split} labels must be one integer per image, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and not (0 <= labels.min() and labels.max() < num_classes):
        raise DataError(
            f"dataset {name}: {split} labels run from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1}; "
            "set data.num_classes"
        )
    return torch.from_numpy(labels.astype(np.int64))


VAL_SPLIT_SEED = 0  # the validation split is drawn once for everyone: the same for every run, variant and seed
DEFAULT_VAL_IMAGES = 5000  # data.val_size=null: this many, or a tenth of the training images if fewer


@dataclass
class Splits:
    """A dataset's splits as tensors on the training device: the validation split is None when there is none."""

    train: Split
    val: Optional[Split]
    test: Split


def validation_count(val_size: Optional[int], training_images: int) -> int:
    """The images the validation split takes from ``training_images`` (``data.val_size``; null: the default rule)."""
    return min(DEFAULT_VAL_IMAGES, training_images // 10) if val_size is None else val_size


def split_indices(
    available: int, val_images: int, train_size: Optional[int], name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into a loader's training split: a fixed random draw (``VAL_SPLIT_SEED``), each in file order.

    The validation split is the same whatever the run's seed; ``train_size`` keeps that many of the rest.
    """
    if val_images >= available:
        raise DataError(
            f"dataset {name}: data.val_size={val_images} leaves none of its {available} training images to train on; "
            "lower data.val_size"
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).numpy()
    train = order[val_images:]
    if train_size is not None:
        if train_size > len(train):
            raise DataError(
                f"dataset {name}: data.train_size={train_size} is more than the {len(train)} training images it has "
                f"(beside data.val_size={val_images} for validation); lower it, or set it to null for all"
            )
        train = train[:train_size]
    return np.sort(train), np.sort(order[:val_images])


def locate_dataset(name: str, root: Path, download: bool, loader: Optional[str] = None) -> None:
    """Make sure a dataset's files are there (downloading them if allowed) without reading them; DataError if not.

    For loaders that say where their files are (a ``locate(root, download)`` attribute, as the IDX datasets have);
    the others are checked when they load.
    """
    locate = getattr(get_loader(name, loader), "locate", None)
    if callable(locate):
        locate(root, download)


def load_dataset(
    name: str,
    root: Path,
    download: bool,
    resize: str,
    mean: Union[float, Sequence[float]],
    std: Union[float, Sequence[float]],
    device: torch.device,
    train_size: Optional[int] = None,
    val_size: Optional[int] = 0,
    test_size: Optional[int] = None,
    size: int = IMAGE_SIDE,
    num_classes: int = 10,
    loader: Optional[str] = None,
) -> Splits:
    """The splits of dataset ``name`` (or of ``loader``) as preprocessed tensors on ``device``.

    ``train_size`` training images (null: all that the validation split leaves), ``val_size`` validation
    images drawn from the loader's training split (``split_indices``), ``test_size`` test images (null: all).
    A loader that generates its images (it takes ``train_size``) is asked for the training and validation
    images together.
    """
    load = get_loader(name, loader)
    accepted, _ = accepted_arguments(load)
    offered: dict[str, object] = {"root": root, "download": download, "test_size": test_size}
    generated_val = None
    if "train_size" in accepted:
        if train_size is None:
            raise ConfigError(f"dataset {name} generates its images: set data.train_size (and data.test_size)")
        generated_val = validation_count(val_size, train_size)
        offered["train_size"] = train_size + generated_val
    try:
        arrays = load(**{k: v for k, v in offered.items() if k in accepted})
    except UserError:
        raise
    except (OSError, ValueError) as e:  # its files or their contents: one line (a bug in it keeps its traceback)
        raise DataError(
            f"dataset {name}: its loader failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        ) from None
    if not isinstance(arrays, dict):
        raise DataError(
            f"dataset {name}: its loader returned {type(arrays).__name__}, not a dict "
            "{'train': (images, labels), 'test': (images, labels)}"
        )
    train_images, train_labels = _checked_arrays(arrays, "train", name)
    test_images, test_labels = _checked_arrays(arrays, "test", name)
    val_images = generated_val if generated_val is not None else validation_count(val_size, len(train_images))
    train_index, val_index = split_indices(
        len(train_images), val_images, None if generated_val is not None else train_size, name
    )
    if test_size is not None and "test_size" not in accepted:
        test_images, test_labels = test_images[:test_size], test_labels[:test_size]

    def to_split(images: np.ndarray, labels: np.ndarray, split: str) -> Split:
        labels_t = _checked_labels(labels, num_classes, name, split).to(device)
        image_size = (int(images.shape[1]), int(images.shape[2]))
        return Split(preprocess(images, resize, mean, std, device, size), labels_t, image_size)

    whole = len(train_index) == len(train_images)  # no copy of the training images when none are held out
    train = to_split(
        train_images if whole else train_images[train_index],
        train_labels if whole else train_labels[train_index],
        "train",
    )
    val = to_split(train_images[val_index], train_labels[val_index], "val") if len(val_index) else None
    return Splits(train, val, to_split(test_images, test_labels, "test"))


def _checked_arrays(arrays: dict, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in arrays:
        raise DataError(f"dataset {name}: its loader returned no {split!r} split (it returned {sorted(arrays)})")
    try:
        images, labels = (np.asarray(a) for a in arrays[split])
    except (TypeError, ValueError):
        raise DataError(f"dataset {name}: its {split!r} split must be a pair (images, labels)") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels) or not len(images):
        raise DataError(
            f"dataset {name}: {split} images must be uint8 (N, H, W) or (N, H, W, C) with one label each, "
            f"got {images.dtype} {images.shape} and {len(labels)} labels"
        )
    return images, labels
