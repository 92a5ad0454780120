"""What the dashboard reads from the catalog, in few queries (no Streamlit here).

``entry_rows`` lists every entry in ONE joined query (``Zoo.list`` loads each entry's artifact and
metrics lazily: two queries per entry), and ``fingerprint`` is a cheap key that changes whenever an entry
is added, removed or re-pointed, so cached frames are rebuilt exactly when the catalog changed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from zoo.catalog.engine import describe_url, session_scope
from zoo.catalog.models import Architecture, Artifact, Metrics, ZooEntry


def entry_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every zoo entry as a plain dict (the fields ``dashboard.data.catalog_frame`` reads), by name."""
    columns = [ZooEntry.name, ZooEntry.dataset, ZooEntry.added_at, Architecture.name.label("arch"),
               Artifact.sha256, Artifact.size_bytes, Artifact.verified, Metrics.top1, Metrics.top5,
               Metrics.fp32_bytes, Metrics.params, Metrics.slice_sparsity, Metrics.macs_dense,
               Metrics.macs_sparse, Metrics.measured_top1, Metrics.measured_top5]
    query = (select(*columns).join(ZooEntry.architecture).join(ZooEntry.artifact).join(Artifact.metrics)
             .order_by(ZooEntry.name))
    with session_scope(engine) as session:
        rows = [row._asdict() for row in session.execute(query)]
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


def fingerprint(engine: Engine) -> tuple[Any, ...]:
    """Changes when entries are added, removed or point at another artifact (a cache key, not a hash)."""
    query = (select(func.count(ZooEntry.id), func.max(ZooEntry.added_at), func.sum(ZooEntry.artifact_id),
                    func.max(ZooEntry.id), func.max(Metrics.measured_at))
             .select_from(ZooEntry).outerjoin(Metrics, Metrics.artifact_id == ZooEntry.artifact_id))
    with session_scope(engine) as session:
        return tuple(str(v) for v in session.execute(query).one())


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
