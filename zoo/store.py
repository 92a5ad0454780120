"""Content-addressed artifact store: ``objects/<sha256[:2]>/<sha256>.lnx`` plus ``refs/<name>`` files.

Objects are written atomically (temporary file, fsync, rename) and made read-only; every read re-hashes the
file, and a file whose hash is wrong is moved to ``quarantine/`` (never served, never silently deleted).
A ref is a one-line file holding the sha256 an entry name points to, named by ``zoo.names.to_filename``
(``refs/timm%2Fresnet18.cifar10-a``): together with the self-describing objects, the refs are enough to
rebuild the catalog (``lilnetx zoo reindex``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from lilnetx.files import atomic_file
from zoo.errors import ChecksumError, InvalidNameError
from zoo.names import check_sha256, from_filename, to_filename

CHUNK = 1 << 20
LEFTOVER_AGE_S = 600  # a download's temporary file untouched this long was left by a killed process
log = logging.getLogger(__name__)


def lilnetx_home() -> Path:
    """``LILNETX_HOME`` or ``~/.cache/lilnetx``: the cache and artifact store."""
    return Path(os.environ.get("LILNETX_HOME") or Path.home() / ".cache" / "lilnetx").expanduser()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(final: Path, chunks: Iterable[bytes], *, expect: str | None = None, source: str = "",
                  mode: int | None = None) -> str:
    """Write ``chunks`` to a temporary file beside ``final``, fsync, rename; return the sha256 written.

    With ``expect``, bytes hashing to anything else raise :class:`ChecksumError` and ``final`` is untouched.
    """
    digest = hashlib.sha256()
    with atomic_file(final, mode=mode) as f:
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
        if expect is not None and digest.hexdigest() != expect:
            raise ChecksumError(
                f"{source} has sha256 {digest.hexdigest()}, not the expected {expect}: the file is corrupt "
                "or was replaced; it was rejected and nothing was stored"
            )
    return digest.hexdigest()


def read_chunks(f: BinaryIO, limit: int | None = None, source: str = "stream") -> Iterator[bytes]:
    """Chunks of ``f``; raise :class:`ChecksumError` as soon as more than ``limit`` bytes arrive."""
    seen = 0
    while chunk := f.read(CHUNK):
        seen += len(chunk)
        if limit is not None and seen > limit:
            raise ChecksumError(f"{source} sent more than the {limit} bytes expected; refusing it")
        yield chunk


def _remove_leftovers(folder: Path) -> None:
    """Remove the temporary files of writes into ``folder`` that were killed (kill -9, power loss): untouched
    for :data:`LEFTOVER_AGE_S` (a live download writes at least every read timeout)."""
    cutoff = time.time() - LEFTOVER_AGE_S
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:  # removed meanwhile by another process
            continue


def copy_file_atomic(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` so that ``dest`` is never seen half-written."""
    with open(src, "rb") as f:
        _write_atomic(dest, read_chunks(f))


class Store:
    """The artifact store rooted at ``root`` (by default ``$LILNETX_HOME/store``)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else lilnetx_home() / "store"

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def object_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "objects" / sha256[:2] / f"{sha256}.lnx"

    def _ref_path(self, name: str) -> Path:
        return self.root / "refs" / to_filename(name)

    def put_stream(self, sha256: str, f: BinaryIO, *, size: int | None = None, source: str = "stream") -> Path:
        """Store the bytes of ``f``, which must hash to ``sha256`` (and be at most ``size`` bytes when given)."""
        final = self.object_path(sha256)
        if self.get(sha256) is None:
            _remove_leftovers(final.parent)
            _write_atomic(final, read_chunks(f, size, source), expect=sha256, source=source, mode=0o444)
        return final

    def put_file(self, path: Path, sha256: str | None = None) -> tuple[str, Path]:
        """Store a local file; return its sha256 and the object's path.

        With ``sha256`` (known already, e.g. from reading the artifact) the file is hashed only while it is
        copied in, and bytes hashing to anything else (the file changed meanwhile) raise :class:`ChecksumError`.
        """
        if sha256 is None:
            sha256 = sha256_file(path)
        with open(path, "rb") as f:
            return sha256, self.put_stream(sha256, f, source=str(path))

    def get(self, sha256: str) -> Path | None:
        """The object's path after re-checking its sha256; ``None`` when absent or corrupt (quarantined)."""
        path = self.object_path(sha256)
        if not path.is_file():
            return None
        if sha256_file(path) == sha256:
            return path
        self._quarantine(path)
        return None

    def _quarantine(self, path: Path) -> None:
        dest = self.root / "quarantine" / f"{path.name}.{time.time_ns()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, dest)
        log.warning("cached artifact %s was corrupt (sha256 mismatch); moved it to %s", path, dest)

    def set_ref(self, name: str, sha256: str) -> None:
        """Point entry ``name`` at ``sha256`` (atomically)."""
        check_sha256(sha256)
        _write_atomic(self._ref_path(name), [f"{sha256}\n".encode()])

    def ref(self, name: str) -> str | None:
        """The sha256 entry ``name`` points at, or ``None``."""
        path = self._ref_path(name)
        return path.read_text().strip() if path.is_file() else None

    def remove_ref(self, name: str) -> None:
        self._ref_path(name).unlink(missing_ok=True)

    def refs(self) -> dict[str, str]:
        """Every ``name -> sha256`` ref; malformed ref files are skipped with a warning."""
        found: dict[str, str] = {}
        folder = self.root / "refs"
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.startswith("."):
                continue
            try:
                found[from_filename(path.name)] = check_sha256(path.read_text().strip())
            except InvalidNameError as exc:
                log.warning("skipping malformed ref file %s: %s", path, exc)
        return found
