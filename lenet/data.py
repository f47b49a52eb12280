"""Datasets as tensors: IDX reading, download, preprocessing once, and shuffled mini-batches."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from lenet.errors import DataError

# torchvision's folder name for each dataset: files live in ROOT/<folder>/raw/
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SIDE = 32  # LeNet-5's input: 28x28 digits centred in a 32x32 field
CHANNELS = 1  # grayscale: the images are preprocessed to (N, CHANNELS, 32, 32)
PREPROCESS_CHUNK = 1024  # images per preprocessing pass: ~4 MB of float32 intermediates
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Split:
    """One split of a dataset as tensors on the training device."""

    images: torch.Tensor  # (N, 1, 32, 32) float32, normalised
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; bad files raise DataError."""
    try:
        if path.suffix == ".gz":
            raw = bytearray(gzip.decompress(path.read_bytes()))
        else:  # straight into a writable buffer: one copy of the file, not two (~30 ms less for MNIST's train set)
            with path.open("rb") as f:
                raw = bytearray(os.fstat(f.fileno()).st_size)
                del raw[f.readinto(raw) :]  # a file that shrank meanwhile fails the size check below
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}; delete it and download again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file (bad header {raw[:4].hex()}); delete it and download again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it and download again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: its header promises {expected} bytes of data for shape "
            f"{shape}, the file holds {len(raw) - header}; delete it and download again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


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
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        reason = " ".join(str(e).split())  # torchvision's message spans lines; the error is one
        raise DataError(
            f"downloading {dataset} into {root} failed ({type(e).__name__}: {reason}); put the four IDX files "
            f"in {root / TORCHVISION_FOLDERS[dataset] / 'raw'} or point data.root at a copy"
        ) from None


def locate_raw(root: Path, dataset: str, download: bool) -> dict[str, tuple[Path, Path]]:
    """Paths of the (images, labels) IDX files per split, downloading them if allowed."""
    found = _find_split_files(root, dataset)
    if found is None and download:
        # concurrent sweep jobs must not download into the same folder at once
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(root / f".{dataset}.download.lock"):
            found = _find_split_files(root, dataset)  # another job may have fetched it meanwhile
            if found is None:
                _download(root, dataset)
                found = _find_split_files(root, dataset)
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


def preprocess(images: np.ndarray, resize: str, mean: float, std: float, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float32 (N, 1, 32, 32) on ``device``, by zero padding or bilinear resize."""
    pixels = torch.from_numpy(images).to(device).unsqueeze(1)
    height, width = pixels.shape[-2:]
    if resize == "pad":  # 1998 paper: the 28x28 digit centred in a 32x32 field of background
        top, left = (IMAGE_SIDE - height) // 2, (IMAGE_SIDE - width) // 2
        padding = (left, IMAGE_SIDE - width - left, top, IMAGE_SIDE - height - top)
        transform = lambda x: F.pad(x, padding)
    elif resize == "resize":  # as torchvision's Resize(32): antialiased bilinear
        # one matrix product per axis, (32, 28) @ x @ (28, 32): 1.7x faster than F.interpolate here
        rows = resize_matrix(height, IMAGE_SIDE).to(device)
        cols = resize_matrix(width, IMAGE_SIDE).to(device).t()
        transform = lambda x: rows @ x @ cols
    else:
        raise ValueError(f"resize must be 'pad' or 'resize', got {resize!r}")
    out = torch.empty(len(pixels), 1, IMAGE_SIDE, IMAGE_SIDE, device=device)
    # a chunk at a time into the final tensor: the same bits as whole-set passes, whose ~700 MB of intermediates
    # a fresh process paid for page by page (loading MNIST in train.py: 0.5-1.5 s -> 0.25-0.4 s)
    for start in range(0, len(pixels), PREPROCESS_CHUNK):
        chunk = pixels[start : start + PREPROCESS_CHUNK].float().div_(255.0)
        out[start : start + PREPROCESS_CHUNK] = transform(chunk).sub_(mean).div_(std)
    return out


def load_dataset(
    name: str,
    root: Path,
    download: bool,
    resize: str,
    mean: float,
    std: float,
    device: torch.device,
    synthetic_sizes: tuple[int, int] = (2000, 500),
) -> tuple[Split, Split]:
    """The train and official test split of dataset ``name`` as preprocessed tensors on ``device``."""
    if name == "synthetic":
        train_size, test_size = synthetic_sizes
        arrays = {"train": make_synthetic(train_size, seed=1), "test": make_synthetic(test_size, seed=2)}
    else:
        files = locate_raw(root, name, download)
        arrays = {split: load_idx_split(*paths) for split, paths in files.items()}
    splits = []
    for split in ("train", "test"):
        images, labels = arrays[split]
        splits.append(
            Split(preprocess(images, resize, mean, std, device), torch.from_numpy(labels.astype(np.int64)).to(device))
        )
    return splits[0], splits[1]
