"""Seed the catalog from the artifacts the repository ships in ``zoo_artifacts/`` (``ARCH.TAG.lnx`` files).

A ``/`` in an architecture is written ``%2F`` in the file name (``zoo.names.to_filename``):
``timm/resnet18.cifar10-a`` ships as ``timm%2Fresnet18.cifar10-a.lnx``.

Idempotent: an entry already pointing at the same artifact is left alone, and a local entry of the same
name with another artifact wins (with a warning). ``seed_shipped`` only does the work when the folder
changed since the catalog was last seeded from it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.catalog import queries
from zoo.catalog.engine import run_write, session_scope
from zoo.errors import EntryExistsError
from zoo.names import from_filename, split_name

if TYPE_CHECKING:
    from zoo.service import Zoo

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "zoo_artifacts"
_STATE_KEY = "seed_fingerprint"
log = logging.getLogger(__name__)


def seed(zoo: Zoo, folder: Path) -> list[str]:
    """Add every ``ARCH.TAG.lnx`` of ``folder`` to ``zoo``; return the entry names now in the catalog."""
    names = []
    for path in sorted(folder.glob("*.lnx")):
        try:
            expected = from_filename(path.stem)
            name = zoo.add(path, split_name(expected)[1])
        except (ValueError, EntryExistsError) as exc:  # bad name or tag, artifact failing verification
            log.warning("not seeding %s: %s", path.name, exc)
            continue
        if name != expected:
            log.warning("shipped artifact %s holds architecture %s: catalogued as %s", path.name,
                        split_name(name)[0], name)
        names.append(name)
    return names


def _fingerprint(folder: Path) -> str:
    files = sorted(folder.glob("*.lnx")) if folder.is_dir() else []
    text = "\n".join(f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(f"{folder}\n{text}".encode()).hexdigest()


def seed_shipped(zoo: Zoo) -> list[str]:
    """Seed from ``SHIPPED_DIR`` when it changed since the last seeding of this catalog."""
    fingerprint = _fingerprint(SHIPPED_DIR)
    with session_scope(zoo.engine) as session:
        if queries.get_state(session, _STATE_KEY) == fingerprint:
            return []
    names = seed(zoo, SHIPPED_DIR) if SHIPPED_DIR.is_dir() else []
    run_write(zoo.engine, lambda session: queries.set_state(session, _STATE_KEY, fingerprint))
    return names
