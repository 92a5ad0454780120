"""What the dashboard reads from the catalog, in few queries (no Streamlit here).

``entry_rows`` lists every entry through the query and the rows of ``Zoo.list`` (``queries.entry_table``,
``zoo.model_card.list_row``: one joined query, the one measured-else-claimed accuracy rule) without
reading the remote zoo's index; ``fingerprint`` is a cheap key that changes whenever an entry is added,
removed or re-pointed, so cached frames are rebuilt exactly when the catalog changed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from zoo.catalog import queries
from zoo.catalog.engine import describe_url, session_scope
from zoo.model_card import list_row


def entry_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every zoo entry as a ``Zoo.list()`` row (``zoo.model_card.list_row``), by name."""
    with session_scope(engine) as session:
        return [list_row(row) for row in queries.entry_table(session)]


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
