"""Writing a run's files so that a crash leaves the old file or the new one, never a part of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
        _fsync(Path(tmp))  # the data on disk before the rename makes it visible
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename itself, so a power cut keeps the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every OS (Windows); nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never a part."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that ``atomic_file`` left in ``folder`` when a process died before its rename."""
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically; serialised in memory first, so that a full disk is an OSError
    (torch's own writer turns it into a RuntimeError)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
