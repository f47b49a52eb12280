"""IDX files (the format MNIST ships in): reading them safely, finding them, downloading them once.

A dataset's four files live in ``ROOT/<Name>/raw/`` (torchvision's layout) or in ``ROOT`` itself, raw
or gzipped. A download goes to a temporary folder and each file is moved in with one rename under a
lock, so concurrent jobs download once and never read half a file.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from filelock import FileLock

from lenet.core.errors import DataError

# torchvision's folder name for each dataset: files live in ROOT/<folder>/raw/
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_IDX_BYTES = 1 << 32  # 4 GiB: far above any LeNet dataset, far below what a corrupt header can claim
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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
            looked_in = " and ".join(str(d) for d in candidate_dirs(root, dataset))
            raise DataError(
                f"{dataset} is not in {looked_in}, and downloading it there failed ({type(e).__name__}: {reason}); "
                f"put the four IDX files in {raw} or point data.root at a copy (data.download=false then uses only "
                "the files there)"
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
        made_lock = not lock.exists()
        try:
            try:
                with FileLock(lock):
                    found = _find_split_files(root, dataset)  # another job may have fetched it meanwhile
                    if found is None:
                        _download(root, dataset)
                        found = _find_split_files(root, dataset)
            finally:
                if made_lock:  # the user's folder keeps only the data: the lock goes once no one needs it
                    lock.unlink(missing_ok=True)
        except DataError:
            if created is not None:  # a mistyped data.root leaves no folders behind
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
