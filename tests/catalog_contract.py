"""Catalog behaviour every database must show. ``test_catalog`` (SQLite) and ``test_catalog_postgres`` run it
by subclassing :class:`CatalogContract` and providing a ``url`` fixture (a fresh, empty database per test).
"""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine
from zoo_helpers import put_fake

from zoo.catalog import queries
from zoo.catalog.engine import MIGRATIONS, get_engine, session_scope, upgrade
from zoo.catalog.models import Base
from zoo.errors import EntryExistsError, EntryNotFoundError
from zoo.service import Zoo
from zoo.store import Store


def _add_many(url: str, store_root: str, prefix: str, count: int, start: multiprocessing.Event) -> None:
    """Worker: add ``count`` entries (plus one artifact both workers share) as fast as possible."""
    z = Zoo(get_engine(url), Store(store_root))
    start.wait(30)
    put_fake(z, f"shared.mnist-{prefix}", b"the same bytes in both processes")
    for i in range(count):
        put_fake(z, f"arch{i % 3}.mnist-{prefix}{i}", f"{prefix}-{i}".encode())


class CatalogContract:
    @pytest.fixture
    def z(self, url: str, tmp_path: Path) -> Zoo:
        return Zoo(get_engine(url), Store(tmp_path / "store"))

    def test_migrations_build_exactly_the_models(self, z: Zoo) -> None:
        with z.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        upgrade(z.engine)  # at head: a no-op

    def test_migration_0003_keeps_existing_rows(self, url: str) -> None:
        """Upgrade a catalog that holds an entry, metrics and a benchmark from 0002 to the newest schema."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        old = create_engine(url)
        with old.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
        with old.begin() as conn:
            tables = MetaData()
            tables.reflect(conn)
            t = tables.tables
            now = datetime(2026, 1, 1, tzinfo=UTC)
            conn.execute(t["artifacts"].insert().values(
                id=1, sha256="a" * 64, size_bytes=10, uri="store:" + "a" * 64, format_version=1, arch="tiny",
                arch_kwargs={}, header={}, added_at=now, verified=True))
            conn.execute(t["architectures"].insert().values(id=1, name="tiny"))
            conn.execute(t["entries"].insert().values(name="tiny.mnist-a", tag="mnist-a", dataset="mnist",
                                                      architecture_id=1, artifact_id=1, added_at=now))
            conn.execute(t["metrics"].insert().values(
                artifact_id=1, top1=0.97, top5=0.99, size_bytes=10, fp32_bytes=40, size_parts={}, params=10,
                slice_sparsity=0.0, unstructured_sparsity=0.0))
            conn.execute(t["benchmarks"].insert().values(
                artifact_id=1, machine="ci", device="cpu", threads=1, batch=1, slim=False, latencies_ms=[1.0],
                mean_ms=1.0, p50_ms=1.0, p90_ms=1.0, measured_at=now))
        old.dispose()
        z = Zoo(get_engine(url), Store("unused"), measure_timeout_s=0)
        card = z.card("tiny.mnist-a")
        assert card["accuracy"] == {"top1": 0.97, "top5": 0.99, "measured": False}  # old figures: claims
        with session_scope(z.engine) as session:
            (bench,) = queries.benchmarks(session, "tiny.mnist-a")
            assert (bench.variant, bench.machine_info, bench.slim) == ("dense", None, False)

    def test_migration_0004_recomputes_sparsity_from_the_layers(self, url: str) -> None:
        """0003 rows: one mixed slice sparsity; 0004 recomputes conv slice and weight sparsity per artifact."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        old = create_engine(url)
        with old.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        with old.begin() as conn:
            tables = MetaData()
            tables.reflect(conn)
            t = tables.tables
            now = datetime(2026, 1, 1, tzinfo=UTC)
            for i, sha in ((1, "a"), (2, "b")):
                conn.execute(t["artifacts"].insert().values(
                    id=i, sha256=sha * 64, size_bytes=10, uri="store:" + sha * 64, format_version=1, arch="tiny",
                    arch_kwargs={}, header={}, added_at=now, verified=True))
                conn.execute(t["metrics"].insert().values(
                    artifact_id=i, top1=0.97, top5=0.99, size_bytes=10, fp32_bytes=40, size_parts={}, params=10,
                    slice_sparsity=0.99, unstructured_sparsity=0.9))
            layer = dict(coded_bits=None, estimated_bits=None, macs_dense=None, macs_sparse=None)
            conn.execute(t["layer_stats"].insert(), [  # artifact 1: a 3x3 conv (8 slices, 2 zero) and a linear
                dict(artifact_id=1, position=0, name="conv", latent_group="c", shape=[4, 2, 3, 3], params=72,
                     slice_sparsity=0.25, unstructured_sparsity=0.5, **layer),
                dict(artifact_id=1, position=1, name="fc", latent_group="d", shape=[10, 10], params=100,
                     slice_sparsity=0.99, unstructured_sparsity=0.99, **layer),
                dict(artifact_id=1, position=2, name="head", latent_group=None, shape=[2, 10], params=20,
                     slice_sparsity=0.0, unstructured_sparsity=0.0, **layer),
                dict(artifact_id=2, position=0, name="fc", latent_group="d", shape=[5, 4], params=20,  # no convs
                     slice_sparsity=0.5, unstructured_sparsity=0.5, **layer)])
        old.dispose()
        engine = get_engine(url)
        with session_scope(engine) as session:
            a, b = (queries.get_artifact(session, sha * 64) for sha in "ab")
            assert a.metrics.conv_slice_sparsity == pytest.approx(0.25)
            assert a.metrics.weight_sparsity == pytest.approx((36 + 99) / 172)  # compressed layers only
            assert [x.conv_slice_sparsity for x in a.layers] == [0.25, None, None]
            assert [x.weight_sparsity for x in a.layers] == [0.5, 0.99, 0.0]
            assert (b.metrics.conv_slice_sparsity, b.metrics.weight_sparsity) == (None, 0.5)

    def test_list_filters(self, z: Zoo) -> None:
        put_fake(z, "tiny.mnist-a", b"a", top1=0.99, slice_sparsity=0.8)
        put_fake(z, "tiny.mnist-b", b"b" * 20, top1=0.90, slice_sparsity=0.2)
        put_fake(z, "other.cifar10-c", b"c" * 100, top1=0.70, slice_sparsity=0.5)
        put_fake(z, "mlp.mnist-d", b"d" * 5, top1=0.80, slice_sparsity=None)  # no K×K convs

        def names(*args: str, **filters: float | str) -> list[str]:
            return [e["name"] for e in z.list(*args, **filters)]

        assert names() == ["mlp.mnist-d", "other.cifar10-c", "tiny.mnist-a", "tiny.mnist-b"]
        assert names("tiny.*") == ["tiny.mnist-a", "tiny.mnist-b"]
        assert names("*-[ab]", dataset="mnist") == ["tiny.mnist-a", "tiny.mnist-b"]
        assert names(max_bytes=20) == ["mlp.mnist-d", "tiny.mnist-a", "tiny.mnist-b"]
        assert names(min_accuracy=0.9) == ["tiny.mnist-a", "tiny.mnist-b"]
        assert names(min_slice_sparsity=0.5) == ["other.cifar10-c", "tiny.mnist-a"]
        assert names(min_slice_sparsity=0.0) == ["other.cifar10-c", "tiny.mnist-a", "tiny.mnist-b"]  # no "—"
        mlp = z.list("mlp.mnist-d")[0]
        assert (mlp["conv_slice_sparsity"], mlp["weight_sparsity"], mlp["macs_saved"]) == (None, 0.5, 0.5)
        assert names(dataset="cifar10", min_accuracy=0.8) == []
        row = z.list("tiny.mnist-a")[0]
        assert row["bytes"] == 1 and row["compression_ratio"] == 200.0 and row["cached"]
        with pytest.raises(ValueError, match="fraction"):
            z.list(min_accuracy=98)

    def test_record_round_trips_through_the_catalog(self, z: Zoo) -> None:
        record = put_fake(z, "tiny.mnist-a", b"a")
        with session_scope(z.engine) as session:
            assert queries.artifact_record(queries.require_entry(session, "tiny.mnist-a").artifact) == record

    def test_existing_entry_is_kept_unless_replaced(self, z: Zoo) -> None:
        first = put_fake(z, "tiny.mnist-a", b"one")
        put_fake(z, "tiny.mnist-a", b"one")  # same artifact: a no-op
        with pytest.raises(EntryExistsError, match="zoo remove tiny.mnist-a"):
            put_fake(z, "tiny.mnist-a", b"two")
        assert z.list()[0]["sha256"] == first.sha256 == z.store.refs()["tiny.mnist-a"]
        second = put_fake(z, "tiny.mnist-b", b"two")
        z.catalogue("tiny.mnist-a", "mnist", second, queries.STORE_URI + second.sha256, replace=True)
        assert z.list("tiny.mnist-a")[0]["sha256"] == second.sha256 == z.store.refs()["tiny.mnist-a"]

    def test_remove_keeps_the_artifact_and_its_benchmarks(self, z: Zoo) -> None:
        put_fake(z, "tiny.mnist-a", b"a")
        put_fake(z, "tiny.mnist-b", b"a")  # same artifact under a second tag
        with session_scope(z.engine, write=True) as session:
            queries.add_benchmark(session, "tiny.mnist-a", machine="ci", device="cpu", threads=1, batch=1,
                                  latencies_ms=[3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
        z.remove("tiny.mnist-a")
        assert [e["name"] for e in z.list()] == ["tiny.mnist-b"]
        assert z.store.refs() == {"tiny.mnist-b": z.list()[0]["sha256"]}
        with pytest.raises(EntryNotFoundError, match="Did you mean tiny.mnist-b"):
            z.remove("tiny.mnist-a")
        with session_scope(z.engine) as session:
            (bench,) = queries.benchmarks(session, "tiny.mnist-b")
            assert (bench.mean_ms, bench.p50_ms, bench.p90_ms) == (5.5, 5.5, 9.0)

    def test_large_counts_fit(self, z: Zoo) -> None:
        record = put_fake(z, "tiny.mnist-a", b"a")
        with session_scope(z.engine, write=True) as session:
            entry = queries.require_entry(session, "tiny.mnist-a")
            entry.artifact.metrics.macs_dense = 12 * 10**9
            entry.artifact.metrics.params = 3 * 10**9
        with session_scope(z.engine) as session:
            m = queries.require_entry(session, "tiny.mnist-a").artifact.metrics
            assert (m.macs_dense, m.params, m.size_bytes) == (12 * 10**9, 3 * 10**9, record.size_bytes)

    def test_two_processes_adding_at_once_lose_nothing(self, z: Zoo, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Event()
        workers = [ctx.Process(target=_add_many, args=(url, str(z.store.root), p, 12, start)) for p in "xy"]
        for w in workers:
            w.start()
        start.set()
        for w in workers:
            w.join(120)
        assert [w.exitcode for w in workers] == [0, 0]
        names = [e["name"] for e in z.list()]
        assert len(names) == 26 and len(set(names)) == 26
        assert sorted(z.store.refs()) == names
        with session_scope(z.engine) as session:
            assert queries.get_artifact(session, z.list("shared.mnist-x")[0]["sha256"]) is not None
