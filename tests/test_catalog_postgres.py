"""The catalog contract against a real PostgreSQL server, started in a temporary cluster by this module.

Needs Debian's ``postgresql`` (``/usr/lib/postgresql/*/bin``) and the ``psycopg`` driver; skips, saying
which is missing, only where no server can be started.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from catalog_contract import CatalogContract

from zoo.catalog import engine as catalog_engine

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
_database_ids = itertools.count()


def _run_as(user: str | None, *cmd: str) -> None:
    prefix = ["runuser", "-u", user, "--"] if user else []
    result = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip() or result.stdout.strip()}")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a unix socket; yields the socket folder."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need the driver: pip install 'psycopg[binary]'")
    if not PG_BINS or not (PG_BINS[0] / "initdb").exists():
        pytest.skip("no PostgreSQL server in /usr/lib/postgresql/*/bin: apt-get install -y postgresql")
    bin_dir = PG_BINS[0]
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or shutil.which("runuser") is None:
            pytest.skip("running as root without a 'postgres' or 'nobody' user and runuser to run PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="lilnetx-pg-"))
    if user:
        shutil.chown(root, user)
    data = root / "data"
    try:
        _run_as(user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "zoo", "--no-sync")
        _run_as(user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                "-o", f"-k {root} -c listen_addresses='' -F", "start")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL server: {exc}")
    try:
        yield str(root)
    finally:
        for engine in list(catalog_engine._engines.values()):
            if engine.dialect.name == "postgresql":
                engine.dispose()
        try:
            _run_as(user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class TestPostgresCatalog(CatalogContract):
    @pytest.fixture
    def url(self, server: str) -> str:
        import psycopg

        name = f"zoo_test_{os.getpid()}_{next(_database_ids)}"
        with psycopg.connect(f"host={server} user=zoo dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://zoo@/{name}?host={server}"
