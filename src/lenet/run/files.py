"""lenet's one writer: every file it writes into a run or sweep dir (or a tool's output folder) goes through here.

A file is written beside its name and renamed into place, so a crash leaves the old file or the new one,
never a part of either; a symbolic link or a folder at that name is refused in one line (lenet never
writes through a link, onto a file it did not make); a folder that cannot be written is one line too.
A full disk stays an ``OSError`` (``ENOSPC``) for the caller that knows what the run keeps.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from lenet.core.errors import UserError

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class WriteError(UserError):
    """A file lenet would write cannot be: a link or a folder is at its name, or its folder is not writable."""


def check_writable_name(path: Path) -> None:
    """Refuse a name lenet would write at that holds a symbolic link or a folder (WriteError, one line)."""
    if path.is_symlink():
        raise WriteError(
            f"{path} is a symbolic link: lenet does not write through links (onto a file it did not make); "
            "remove the link or write elsewhere"
        )
    if path.is_dir():
        raise WriteError(f"{path} is a folder, where lenet writes a file: move it away or write elsewhere")


def _unwritable(path: Path, error: OSError) -> WriteError:
    return WriteError(
        f"cannot write {path}: its folder {path.parent} is not writable ({error.strerror or error}); "
        "make it writable or write elsewhere"
    )


def write_bytes(path: Union[str, Path], data: Union[bytes, bytearray, memoryview]) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    check_writable_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if e.errno in FULL_DISK:
            raise
        raise _unwritable(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the rename makes it visible
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
        os.replace(tmp, path)  # replaces a name, never follows one
        _fsync_folder(path.parent)  # the rename itself, so a power cut keeps the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Union[str, Path], text: str) -> None:
    """``write_bytes`` of ``text`` in UTF-8."""
    write_bytes(path, text.encode())


def save_torch(obj: object, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through the writer; serialised in memory first, so that a full disk is an
    OSError (torch's own writer turns it into a RuntimeError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def save_figure(figure: Any, path: Path, dpi: int = 120, file_format: Optional[str] = None) -> None:
    """A matplotlib figure to ``path`` through the writer, in ``file_format`` (by default: the name's suffix)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format or path.suffix.lstrip(".") or "png", dpi=dpi)
    write_bytes(path, buffer.getvalue())


def save_yaml(config: Any, path: Path) -> None:
    """An OmegaConf config (or a plain container) as YAML at ``path``, through the writer."""
    from omegaconf import OmegaConf

    node = config if OmegaConf.is_config(config) else OmegaConf.create(config)
    write_text(path, OmegaConf.to_yaml(node))


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every OS (Windows); nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that the writer left in ``folder`` when a process died before its rename."""
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
        except OSError:
            pass
