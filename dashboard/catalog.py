"""What the dashboard reads from the catalog, in few queries (no Streamlit here).

``entry_rows`` lists every entry in ONE joined query (``queries.entry_table``; ``Zoo.list`` builds
each row from ORM objects and lacks the architecture, dense MACs and dates), and ``fingerprint`` is a cheap key that changes whenever an entry
is added, removed or re-pointed, so cached frames are rebuilt exactly when the catalog changed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from zoo.catalog import queries
from zoo.catalog.engine import describe_url, session_scope


def entry_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every zoo entry as a plain dict shaped like a ``Zoo.list()`` row (``accuracy``, ``claimed_accuracy``,
    ``bytes``) plus ``arch``, ``fp32_bytes``, ``macs_dense`` and ``added_at``, by name."""
    with session_scope(engine) as session:
        rows = queries.entry_table(session)
    for row in rows:
        measured_top1, measured_top5 = row.pop("measured_top1"), row.pop("measured_top5")
        claimed = {"top1": row["top1"], "top5": row["top5"]}
        if measured_top1 is not None:
            row["accuracy"] = {"top1": measured_top1, "top5": measured_top5, "measured": True}
        else:
            row["accuracy"] = {**claimed, "measured": False}
        row["claimed_accuracy"] = claimed
        row["bytes"] = row.pop("size_bytes")
        row["top1"], row["top5"] = row["accuracy"]["top1"], row["accuracy"]["top5"]
    return rows


def fingerprint(engine: Engine) -> tuple[str, ...]:
    """Changes when entries are added, removed or re-pointed, or measured (a cache key, not a hash)."""
    with session_scope(engine) as session:
        return queries.catalog_fingerprint(session)


def catalog_url(engine: Engine) -> str:
    """The catalog's URL with any password hidden."""
    return describe_url(str(engine.url))


def plugin_of(arch: str) -> str:
    """The installed plugin that builds ``arch``, or a note that none does (its files cannot be decoded)."""
    from zoo.registry import UnknownArchitectureError, get_architecture

    try:
        return get_architecture(arch).plugin or "registered at runtime"
    except UnknownArchitectureError:
        return "not installed"
