"""The zoo's catalog: SQLAlchemy models (``models``), query functions taking a ``Session`` (``queries``),
engines with Alembic migrations (``engine``) and the plain records they exchange (``records``).

    from zoo.catalog import get_engine, queries, session_scope

    with session_scope(get_engine()) as session:
        names = [e.name for e in queries.find_entries(session, "resnet*", dataset="cifar10")]
"""

from zoo.catalog import queries
from zoo.catalog.engine import get_engine, run_write, session_scope

__all__ = ["get_engine", "queries", "run_write", "session_scope"]
