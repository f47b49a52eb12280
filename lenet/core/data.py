"""Datasets as tensors: a registry of loaders, IDX reading and download, and preprocessing once.

A dataset is one loader function registered with ``@register_dataset`` (or named by ``data.loader``,
a dotted path) that returns ``{"train": (images, labels), "test": (images, labels)}``: uint8 images
``(N, H, W)`` or ``(N, H, W, C)`` and integer labels. Its YAML holds the per-channel mean and std,
the input size and the number of classes; the loader is called with those of ``root``, ``download``,
``train_size`` and ``test_size`` that it takes.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from lenet.core.errors import ConfigError, DataError
from lenet.core.factory import accepted_arguments
from lenet.core.registry import import_function, register

# torchvision's folder name for each dataset: files live in ROOT/<folder>/raw/
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SIDE = 32  # LeNet-5's input: 28x28 digits centred in a 32x32 field
PREPROCESS_CHUNK = 1024  # images per preprocessing pass: ~4 MB of float32 intermediates
MAX_IDX_BYTES = 1 << 32  # 4 GiB: far above any LeNet dataset, far below what a corrupt header can claim
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Split:
    """One split of a dataset as tensors on the training device."""

    images: torch.Tensor  # (N, C, size, size) float32, normalised
    labels: torch.Tensor  # (N,) int64
    image_size: tuple[int, int] = (28, 28)  # (H, W) of the images as the dataset holds them, before preprocessing

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; bad files raise DataError.

    The header is checked before the data is read, and a gzipped file is decompressed only as far as
    its header promises: a corrupt, hostile or huge file costs no more memory than a good one.
    """
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
                raise DataError(f"{path} is not an IDX file (bad header {magic.hex()}); delete it and download again")
            dims = f.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise DataError(f"{path} is truncated inside its header; delete it and download again")
            shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            expected = math.prod(shape) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise DataError(
                    f"{path}: its header promises shape {shape}, {expected} bytes, more than the "
                    f"{MAX_IDX_BYTES >> 30} GiB this reader takes; it is corrupt or not a dataset for LeNet"
                )
            raw = bytearray(expected if path.suffix != ".gz" else 0)
            if path.suffix != ".gz":
                held = os.fstat(f.fileno()).st_size - f.tell()
                if held != expected:
                    raise _size_error(path, shape, expected, held)
                del raw[f.readinto(raw) :]  # a file that shrank meanwhile fails the check below
            else:
                while len(raw) < expected and (chunk := f.read(min(1 << 24, expected - len(raw)))):
                    raw += chunk
                if len(raw) == expected and f.read(1):
                    raise _size_error(path, shape, expected, "more than that")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}; delete it and download again") from None
    if len(raw) != expected:
        raise _size_error(path, shape, expected, len(raw))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _size_error(path: Path, shape: tuple[int, ...], expected: int, held: object) -> DataError:
    return DataError(
        f"{path} is truncated or corrupt: its header promises {expected} bytes of data for shape "
        f"{shape}, the file holds {held}; delete it and download again"
    )


def candidate_dirs(root: Path, dataset: str) -> list[Path]:
    """Folders searched for a dataset's IDX files: torchvision's layout first, then ``root`` itself."""
    return [root / TORCHVISION_FOLDERS[dataset] / "raw", root]


def find_idx_file(folders: list[Path], name: str) -> Path | None:
    """First existing ``name`` or ``name.gz`` in ``folders``."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _find_split_files(root: Path, dataset: str) -> dict[str, tuple[Path, Path]] | None:
    folders = candidate_dirs(root, dataset)
    found = {}
    for split, names in SPLIT_FILES.items():
        paths = tuple(find_idx_file(folders, name) for name in names)
        if None in paths:
            return None
        found[split] = paths
    return found


def _download(root: Path, dataset: str) -> None:
    import torchvision.datasets  # imported only here: it costs a second of start-up

    cls = getattr(torchvision.datasets, TORCHVISION_FOLDERS[dataset])
    raw = root / TORCHVISION_FOLDERS[dataset] / "raw"
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{dataset}.download.") as staging:
        try:
            for train in (True, False):
                cls(staging, train=train, download=True)
        except Exception as e:  # network errors come in many types
            reason = " ".join(str(e).split())  # torchvision's message spans lines; the error is one
            raise DataError(
                f"downloading {dataset} into {root} failed ({type(e).__name__}: {reason}); put the four IDX files "
                f"in {raw} or point data.root at a copy"
            ) from None
        raw.mkdir(parents=True, exist_ok=True)
        for path in (Path(staging) / TORCHVISION_FOLDERS[dataset] / "raw").iterdir():
            os.replace(path, raw / path.name)


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_empty_folders(top: Path) -> None:
    for folder, _, _ in sorted(os.walk(top), key=lambda walked: -len(walked[0])):
        with contextlib.suppress(OSError):  # not empty: something else is there now
            os.rmdir(folder)


def locate_raw(root: Path, dataset: str, download: bool) -> dict[str, tuple[Path, Path]]:
    """Paths of the (images, labels) IDX files per split, downloading them if allowed."""
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root={root} is a file, not a folder; set data.root to the folder that holds {dataset}")
    try:
        return _locate_raw(root, dataset, download)
    except OSError as e:  # permissions, a read-only file system, ...
        raise DataError(f"cannot use data.root={root}: {e.strerror or e}; point data.root at a readable copy") from None


def _locate_raw(root: Path, dataset: str, download: bool) -> dict[str, tuple[Path, Path]]:
    # downloads move each file into place in one rename, so a look without the lock never sees half a file
    found = _find_split_files(root, dataset)
    if found is None and download:
        created = _first_missing(root)
        # concurrent sweep jobs must not download into the same folder at once
        root.mkdir(parents=True, exist_ok=True)
        lock = root / f".{dataset}.download.lock"
        try:
            with FileLock(lock):
                found = _find_split_files(root, dataset)  # another job may have fetched it meanwhile
                if found is None:
                    _download(root, dataset)
                    found = _find_split_files(root, dataset)
        except DataError:
            if created is not None:  # a mistyped data.root leaves no folders behind
                lock.unlink(missing_ok=True)
                _remove_empty_folders(created)
            raise
    if found is None:
        looked_in = " and ".join(str(d) for d in candidate_dirs(root, dataset))
        hint = "" if download else ", or set data.download=true to fetch it"
        raise DataError(
            f"{dataset} not found: looked in {looked_in} for {', '.join(n for p in SPLIT_FILES.values() for n in p)} "
            f"(optionally .gz); set data.root to the folder that holds them{hint}"
        )
    return found


def load_idx_split(images_path: Path, labels_path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one split's images (N, 28, 28) uint8 and labels (N,), checking that they agree."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} should hold uint8 images (N, H, W), holds {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} should hold one label per image, holds shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the two files come from different sets"
        )
    if len(labels) and not (0 <= labels.min() and labels.max() < num_classes):
        raise DataError(f"{labels_path} holds labels outside 0..{num_classes - 1}")
    return images, labels


# ----------------------------------------------------------------------------- synthetic digits

# seven-segment strokes (row0, row1, col0, col1) on a 28x28 canvas, centred
_SEGMENTS = {
    "top": (5, 7, 9, 19), "mid": (13, 15, 9, 19), "bottom": (21, 23, 9, 19),
    "upper_left": (5, 15, 9, 11), "upper_right": (5, 15, 17, 19),
    "lower_left": (13, 23, 9, 11), "lower_right": (13, 23, 17, 19),
}  # fmt: skip
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
        transform = lambda x: F.pad(x, padding)
    elif resize == "resize":  # as torchvision's Resize(32): antialiased bilinear
        # one matrix product per axis, (32, 28) @ x @ (28, 32), with F.interpolate's weights: faster than it
        rows = resize_matrix(height, size).to(device)
        cols = resize_matrix(width, size).to(device).t()
        transform = lambda x: rows @ x @ cols
    else:
        raise ValueError(f"resize must be 'pad' or 'resize', got {resize!r}")
    if channels == 1:  # plain numbers: the bits the harness always had
        normalise = lambda x: x.sub_(means[0]).div_(stds[0])
    else:
        mean_t = torch.tensor(means, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(stds, device=device).view(1, -1, 1, 1)
        normalise = lambda x: x.sub_(mean_t).div_(std_t)
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


def load_dataset(
    name: str,
    root: Path,
    download: bool,
    resize: str,
    mean: Union[float, Sequence[float]],
    std: Union[float, Sequence[float]],
    device: torch.device,
    synthetic_sizes: tuple[int, int] = (2000, 500),
    size: int = IMAGE_SIDE,
    num_classes: int = 10,
    loader: Optional[str] = None,
) -> tuple[Split, Split]:
    """The train and test split of dataset ``name`` (or of ``loader``) as preprocessed tensors on ``device``."""
    load = get_loader(name, loader)
    available = {"root": root, "download": download, "train_size": synthetic_sizes[0], "test_size": synthetic_sizes[1]}
    accepted, _ = accepted_arguments(load)
    arrays = load(**{k: v for k, v in available.items() if k in accepted})
    splits = []
    for split in ("train", "test"):
        if split not in arrays:
            raise DataError(f"dataset {name}: its loader returned no {split!r} split (it returned {sorted(arrays)})")
        images, labels = (np.asarray(a) for a in arrays[split])
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels) or not len(images):
            raise DataError(
                f"dataset {name}: {split} images must be uint8 (N, H, W) or (N, H, W, C) with one label each, "
                f"got {images.dtype} {images.shape} and {len(labels)} labels"
            )
        labels_t = _checked_labels(labels, num_classes, name, split).to(device)
        image_size = (int(images.shape[1]), int(images.shape[2]))
        splits.append(Split(preprocess(images, resize, mean, std, device, size), labels_t, image_size))
    return splits[0], splits[1]
