"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

The file gets the permissions ``open()`` would give it (``0o666`` less the umask: 0644 under 022), not the
private 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file open for writing beside ``path``; when the block ends cleanly it is flushed, fsynced,
    given ``mode`` (default: what ``open()`` would give) and renamed over ``path``, and the folder is fsynced. If the block raises, the
    temporary file is removed and ``path`` is untouched. ``file.name`` is the temporary path (for checks
    before the rename: flush first)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}; choose a writable folder") from None
    os.close(fd)  # reopened by name so that ``file.name`` is the temporary path, as documented
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@functools.cache
def _umask() -> int:
    """The process's umask (read once: changing it briefly to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path, mode=mode) as f:
        f.write(data)
