"""Catalog engines: ``LILNETX_DB`` (any SQLAlchemy URL) or ``sqlite:///registry.db`` in the working folder.

``sqlite:///file:/path/registry.db?mode=ro&uri=true`` opens a catalog read-only (it lists; it cannot be added to).

SQLite runs in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so two
writers queue instead of failing. The schema is brought to the newest Alembic revision on first use.
The caller owns transactions: ``with session_scope(engine, write=True) as session: ...``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from zoo.errors import CatalogError, CatalogLockedError

if TYPE_CHECKING:
    from alembic.config import Config

DEFAULT_URL = "sqlite:///registry.db"
BUSY_TIMEOUT_S = 30.0
WRITE_ATTEMPTS = 5
MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = "0004"  # the newest revision in migrations/versions
_PG_MIGRATION_LOCK = 0x4C4E58  # pg_advisory_xact_lock key serialising concurrent first-use migrations

T = TypeVar("T")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def database_url(url: str | None = None) -> str:
    """``url``, else ``LILNETX_DB``, else the default; relative SQLite paths made absolute."""
    raw = url or os.environ.get("LILNETX_DB") or DEFAULT_URL
    try:
        parsed = make_url(raw)
    except ArgumentError as exc:
        raise CatalogError(
            f"LILNETX_DB={raw!r} is not a SQLAlchemy URL (e.g. sqlite:///registry.db): {exc}") from None
    uri = parsed.query.get("uri") in ("true", "1")  # sqlite:///file:PATH?mode=ro&uri=true: a read-only catalog
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not uri:
        parsed = parsed.set(database=str(Path(parsed.database).expanduser().resolve()))
    return parsed.render_as_string(hide_password=False)


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def get_engine(url: str | None = None) -> Engine:
    """The (cached) engine for ``url`` / ``LILNETX_DB``, migrated to the newest schema."""
    key = database_url(url)
    with _lock:
        if key not in _engines:
            engine = _create_engine(key)
            upgrade(engine)
            _engines[key] = engine
        return _engines[key]


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise CatalogError(f"no database driver for {describe_url(url)}: {exc}; install it, e.g. "
                               "`pip install 'psycopg[binary]'` for postgresql+psycopg://") from None
    if parsed.database and parsed.database != ":memory:" and parsed.query.get("uri") not in ("true", "1"):
        path = parsed.database
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, creator=lambda: _connect_file(path))
    else:
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:  # an immutable, read-only connection (see _connect_file)
            if "readonly" not in str(exc):
                raise
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        write = conn.get_execution_options().get("lilnetx_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _connect_file(path: str) -> sqlite3.Connection:
    """A connection to the SQLite catalog file ``path``, in WAL mode.

    A catalog file that cannot be written, in a folder that cannot be written either, cannot be read in
    WAL mode (SQLite cannot create its ``-shm`` index): it is opened ``immutable`` instead, read-only, so
    that it still lists; writing to it raises :class:`CatalogError`.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        conn.close()
        if "readonly" not in str(exc) or not Path(path).is_file():
            raise
        conn = sqlite3.connect(f"{Path(path).as_uri()}?immutable=1", uri=True, timeout=BUSY_TIMEOUT_S,
                               check_same_thread=False)
    return conn


@contextmanager
def catalog_errors(engine: Engine) -> Iterator[None]:
    """Turn driver errors into :class:`CatalogError` / :class:`CatalogLockedError` naming the fix."""
    where = describe_url(str(engine.url))
    try:
        yield
    except OperationalError as exc:
        text = str(exc.orig)
        if "locked" in text or "busy" in text:
            raise CatalogLockedError(
                f"the catalog {where} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s; let it "
                "finish (or stop it) and retry, or point LILNETX_DB at another database"
            ) from None
        raise CatalogError(f"cannot use the catalog {where}: {text.strip()}; check LILNETX_DB and that the "
                           "database is reachable and writable") from None


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session in one transaction, committed on success; ``write=True`` takes the write lock up front."""
    bind = engine.execution_options(lilnetx_write=True) if write else engine
    with catalog_errors(engine), Session(bind) as session, session.begin():
        yield session


def run_write(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` in a write transaction, retrying when a concurrent writer won a unique race."""
    attempt = 1
    while True:
        try:
            with session_scope(engine, write=True) as session:
                return work(session)
        except IntegrityError:
            if attempt == WRITE_ATTEMPTS:
                raise
            attempt += 1


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty for a new database), read without importing Alembic."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return set()
        return set(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (no-op when it is there); safe with concurrent processes.

    A catalog at :data:`HEAD` is recognised without importing Alembic (a quarter of a second of every
    ``zoo.load``); ``test_catalog`` checks that :data:`HEAD` is the newest migration.
    """
    with catalog_errors(engine):
        if _revisions(engine) == {HEAD}:
            return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = _alembic_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with catalog_errors(engine):
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
        if current == heads:
            return
        try:
            with engine.execution_options(lilnetx_write=True).begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except OperationalError:
            raise  # catalog_errors names it
        except (CommandError, DBAPIError) as exc:
            raise CatalogError(
                f"cannot migrate the catalog {describe_url(str(engine.url))} to this version's schema "
                f"({exc}); it may come from a newer lilnetx-zoo: upgrade, or point LILNETX_DB elsewhere"
            ) from None
