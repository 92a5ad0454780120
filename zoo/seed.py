"""Seed the catalog from the artifacts the repository ships in ``zoo_artifacts/`` (``ARCH.TAG.lnx`` files).

Seeding is explicit: ``lilnetx zoo seed`` (``seed_shipped``), which ``make run`` does. So that
``zoo.list_models`` / ``zoo.load`` work for a new user, ``seed_on_first_use`` (called by ``zoo.api`` and the
``lilnetx zoo`` read commands) seeds a catalog that is empty and was never seeded, once, saying so in one
line; it never writes otherwise. Every seeded artifact is measured like any ``zoo add`` (``zoo.measure``).

A ``/`` in an architecture is written ``%2F`` in the file name (``zoo.names.to_filename``):
``timm/resnet18.cifar10-a`` ships as ``timm%2Fresnet18.cifar10-a.lnx``.

Idempotent: an entry already pointing at the same artifact is left alone, and a local entry of the same
name with another artifact wins (with a warning). ``seed_shipped`` only does the work when the folder
changed since the catalog was last completely seeded from it: the folder's fingerprint is saved only when no
file was skipped.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from zoo.catalog import queries
from zoo.catalog.engine import run_write, session_scope
from zoo.catalog.models import ZooEntry
from zoo.errors import CatalogError, EntryExistsError
from zoo.names import from_filename, split_name
from zoo.service import Zoo

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "zoo_artifacts"
_STATE_KEY = "seed_fingerprint"  # the fingerprint of the folder last seeded without a skipped file
_SEEDED_KEY = "seeded"  # set by every seeding: a catalog is seeded on first use at most once
log = logging.getLogger(__name__)


@dataclass
class SeedReport:
    """What a seeding did: entries now catalogued from the folder, and files skipped (with the reason)."""

    names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    up_to_date: bool = False


def seed(zoo: Zoo, folder: Path) -> SeedReport:
    """Add every ``ARCH.TAG.lnx`` of ``folder`` to ``zoo`` (measuring each one where its dataset is at hand)."""
    report = SeedReport()
    for path in sorted(folder.glob("*.lnx")):
        try:
            expected = from_filename(path.stem)
            name = zoo.add(path, split_name(expected)[1])
        except (ValueError, EntryExistsError) as exc:  # bad name or tag, artifact failing verification
            log.warning("not seeding %s: %s", path.name, exc)
            report.skipped[path.name] = str(exc)
            continue
        if name != expected:
            log.warning("shipped artifact %s holds architecture %s: catalogued as %s", path.name,
                        split_name(name)[0], name)
        report.names.append(name)
    return report


def _fingerprint(folder: Path) -> str:
    files = sorted(folder.glob("*.lnx")) if folder.is_dir() else []
    text = "\n".join(f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(f"{folder}\n{text}".encode()).hexdigest()


def seed_shipped(zoo: Zoo, *, force: bool = False) -> SeedReport:
    """Seed from ``SHIPPED_DIR`` when it changed since the last complete seeding (always with ``force``)."""
    fingerprint = _fingerprint(SHIPPED_DIR)
    with session_scope(zoo.engine) as session:
        if not force and queries.get_state(session, _STATE_KEY) == fingerprint:
            return SeedReport(up_to_date=True)
    report = seed(zoo, SHIPPED_DIR) if SHIPPED_DIR.is_dir() else SeedReport()

    def done(session: Session) -> None:
        queries.set_state(session, _SEEDED_KEY, "1")
        if not report.skipped:
            queries.set_state(session, _STATE_KEY, fingerprint)

    run_write(zoo.engine, done)
    return report


def seed_on_first_use(zoo: Zoo) -> SeedReport | None:
    """Seed an empty, never seeded catalog once (one line on stderr); ``None`` when there was nothing to do."""
    with session_scope(zoo.engine) as session:
        if (queries.get_state(session, _SEEDED_KEY) is not None or queries.get_state(session, _STATE_KEY)
                is not None or session.scalar(select(ZooEntry.id).limit(1)) is not None):
            return None
    count = len(list(SHIPPED_DIR.glob("*.lnx"))) if SHIPPED_DIR.is_dir() else 0
    if count == 0:
        return None
    print(f"lilnetx: first use of this catalog: seeding it with the {count} models shipped in {SHIPPED_DIR} "
          "(once; `lilnetx zoo seed` refreshes it)", file=sys.stderr)
    try:
        return seed_shipped(zoo)
    except CatalogError as exc:  # a read-only catalog: list what it holds
        log.warning("lilnetx: cannot seed the catalog: %s", exc)
        return None
