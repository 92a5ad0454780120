"""The SQLite catalog: the shared contract, engine settings, locking, migrations, reindex and seeding."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from alembic import command
from alembic.config import Config
from catalog_contract import CatalogContract
from sqlalchemy import create_engine, text
from zoo_helpers import local_zoo, make_artifact, put_fake

import lilnetx
from zoo import mirror
from zoo.catalog import engine as catalog_engine
from zoo.catalog import queries
from zoo.catalog.engine import database_url, get_engine, session_scope
from zoo.catalog.records import RecordError
from zoo.errors import CatalogError, CatalogLockedError, InvalidNameError
from zoo.model_card import to_markdown
from zoo.seed import seed, seed_shipped
from zoo.service import Zoo


class TestSQLiteCatalog(CatalogContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'catalog.db'}"


def test_default_url_is_registry_db_in_the_working_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LILNETX_DB", raising=False)
    assert database_url() == f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("LILNETX_DB", "sqlite:///sub/other.db")
    assert database_url() == f"sqlite:///{tmp_path / 'sub' / 'other.db'}"
    engine = get_engine()
    assert (tmp_path / "sub" / "other.db").is_file() and get_engine() is engine
    with session_scope(engine) as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"


def test_head_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(catalog_engine.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [catalog_engine.HEAD]


def test_bad_url_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILNETX_DB", "not a url")
    with pytest.raises(CatalogError, match="LILNETX_DB='not a url' is not a SQLAlchemy URL"):
        get_engine()


def test_locked_database_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_engine, "BUSY_TIMEOUT_S", 0.2)
    z = local_zoo(tmp_path)
    holder = sqlite3.connect(tmp_path / "local" / "registry.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(CatalogLockedError, match="locked by another process.*retry"):
            put_fake(z, "tiny.mnist-a", b"a")
        assert [e["name"] for e in z.list()] == []  # readers are not blocked by a writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    put_fake(z, "tiny.mnist-a", b"a")
    assert [e["name"] for e in z.list()] == ["tiny.mnist-a"]


def test_migration_0002_keeps_rows_and_trusts_only_locally_described_ones(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    config = Config()
    config.set_main_option("script_location", str(catalog_engine.MIGRATIONS))
    with create_engine(f"sqlite:///{db}").begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    columns = "sha256, size_bytes, uri, format_version, arch, arch_kwargs, header, added_at"
    with sqlite3.connect(db) as conn:
        for sha, uri in (("a" * 64, "store:" + "a" * 64), ("b" * 64, f"https://zoo/artifacts/bb/{'b' * 64}.lnx")):
            conn.execute(f"INSERT INTO artifacts ({columns}) VALUES (?, 10, ?, 1, 'tiny', '{{}}', '{{}}', "
                         "'2026-01-01 00:00:00')", (sha, uri))
        # a child row referencing an artifact: the migration must not copy-and-drop the artifacts table
        conn.execute("INSERT INTO architectures (id, name) VALUES (1, 'tiny')")
        conn.execute("INSERT INTO entries (name, tag, dataset, architecture_id, artifact_id, added_at) "
                     "SELECT 'tiny.mnist-a', 'mnist-a', 'mnist', 1, id, '2026-01-01 00:00:00' FROM artifacts LIMIT 1")
    with session_scope(get_engine(f"sqlite:///{db}")) as session:
        rows = session.execute(text("SELECT sha256, verified FROM artifacts ORDER BY sha256")).all()
        entries = session.execute(text("SELECT name FROM entries")).scalars().all()
    assert [(sha[0], bool(verified)) for sha, verified in rows] == [("a", True), ("b", False)]
    assert entries == ["tiny.mnist-a"]


def test_migration_0003_keeps_rows_claims_and_dense_benchmarks(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    config = Config()
    config.set_main_option("script_location", str(catalog_engine.MIGRATIONS))
    with create_engine(f"sqlite:///{db}").begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO artifacts (id, sha256, size_bytes, uri, format_version, arch, arch_kwargs, "
                     "header, added_at, verified) VALUES (1, ?, 10, ?, 1, 'tiny', '{}', '{}', "
                     "'2026-01-01 00:00:00', 1)", ("a" * 64, "store:" + "a" * 64))
        conn.execute("INSERT INTO metrics (artifact_id, top1, top5, size_bytes, fp32_bytes, size_parts, params, "
                     "slice_sparsity, unstructured_sparsity) VALUES (1, 0.97, 0.99, 10, 40, '{}', 10, 0, 0)")
        conn.execute("INSERT INTO benchmarks (artifact_id, machine, device, threads, batch, slim, latencies_ms, "
                     "mean_ms, p50_ms, p90_ms, measured_at) VALUES (1, 'ci', 'cpu', 1, 1, 0, '[1.0]', 1, 1, 1, "
                     "'2026-01-01 00:00:00')")
    with session_scope(get_engine(f"sqlite:///{db}")) as session:
        metrics = session.execute(text("SELECT top1, top5, measured_top1, measured_dataset, measured_images "
                                       "FROM metrics")).one()
        bench = session.execute(text("SELECT variant, machine_info, slim FROM benchmarks")).one()
    assert tuple(metrics) == (0.97, 0.99, None, None, None)  # the old figures stay, as claims
    assert tuple(bench) == ("dense", None, 0)


def test_benchmark_rows_carry_variant_and_machine_info(env: Path) -> None:
    z = local_zoo(env)
    put_fake(z, "tiny.mnist-a", b"a")
    info = {"cpu": "Test CPU", "isa": ["avx2"], "torch": torch.__version__}
    with session_scope(z.engine, write=True) as session:
        queries.add_benchmark(session, "tiny.mnist-a", machine="ci", device="cpu", threads=1, batch=1,
                              latencies_ms=[1.0], variant="sparse", machine_info=info)
        queries.add_benchmark(session, "tiny.mnist-a", machine="ci", device="cpu", threads=1, batch=1,
                              latencies_ms=[2.0])
        with pytest.raises(RecordError, match="field variant: expected one of dense, .*got 'fast'"):
            queries.add_benchmark(session, "tiny.mnist-a", machine="ci", device="cpu", threads=1, batch=1,
                                  latencies_ms=[1.0], variant="fast")
    with session_scope(z.engine) as session:
        rows = sorted(queries.benchmarks(session, "tiny.mnist-a"), key=lambda b: b.mean_ms)
        assert [(b.variant, b.slim, b.machine_info) for b in rows] == [("sparse", True, info),
                                                                     ("dense", False, None)]


def test_catalog_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    get_engine(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    catalog_engine._engines.clear()
    with pytest.raises(CatalogError, match="newer lilnetx-zoo"):
        get_engine(f"sqlite:///{db}")


def test_add_describes_the_artifact_from_the_file(env: Path) -> None:
    path = make_artifact(env / "a.lnx", keep=0.1, top1=0.97)
    z = Zoo.from_env()
    assert z.add(path, "mnist-keep10") == "lenet_300_100.mnist-keep10"
    card = z.card("lenet_300_100.mnist-keep10")
    model = lilnetx.load(path)  # an independent measurement of the same file
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    n_params = sum(p.numel() for p in model.parameters())
    header = lilnetx.read_header(path)
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["size"]["bytes"] == path.stat().st_size == sum(card["size"]["parts"].values())
    assert card["parameters"] == n_params and card["size"]["fp32_bytes"] == 4 * n_params
    assert card["sparsity"]["weight"] == pytest.approx(zeros) and 0.85 < zeros < 0.95
    assert card["sparsity"]["conv_slice"] is None  # an MLP has no K×K slices
    assert "| Conv slice sparsity | — (no K×K convolutions) |" in to_markdown(card)
    assert card["accuracy"] == {"top1": 0.97, "top5": 0.99, "measured": False} and card["dataset"] == "mnist"
    assert card["claimed_accuracy"] == {"top1": 0.97, "top5": 0.99} and card["measured_on"] is None
    assert card["input"] == {"size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}
    assert card["macs"]["dense"] == sum(w.numel() for w in weights) > card["macs"]["sparse"]
    assert [x["name"] for x in card["layers"]] == ["fc1", "fc2", "fc3"]
    assert {x["conv_slice_sparsity"] for x in card["layers"]} == {None}
    assert sum(x["coded_bits"] for x in card["layers"]) == sum(x["coded_bits"] for x in header["layers"])
    assert card["recipe"] == {"epochs": 1, "lambda_rate": 1e-4}
    assert z.store.refs() == {"lenet_300_100.mnist-keep10": card["sha256"]}


def test_an_artifact_failing_verification_adds_nothing(env: Path) -> None:
    data = bytearray(make_artifact(env / "a.lnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (env / "bad.lnx").write_bytes(bytes(data))
    z = Zoo.from_env()
    with pytest.raises(lilnetx.ArtifactError):
        z.add(env / "bad.lnx", "mnist-bad")
    assert z.list() == [] and z.store.refs() == {}
    assert not (env / "home" / "store" / "objects").exists()


@pytest.mark.parametrize(("tag", "message"), [("cifar10-a", "must start with the artifact's dataset 'mnist'"),
                                              ("../x", "invalid tag"), ("mnist.a", "invalid tag")])
def test_tags_are_checked(env: Path, tag: str, message: str) -> None:
    path = make_artifact(env / "a.lnx")
    with pytest.raises(InvalidNameError, match=message):
        Zoo.from_env().add(path, tag)


def test_reindex_rebuilds_a_lost_catalog_from_the_store(env: Path) -> None:
    z = Zoo.from_env()
    for i in (0, 1):
        z.add(make_artifact(env / f"{i}.lnx", seed=i), f"mnist-s{i}")
    put_fake(z, "gone.mnist-x", b"an artifact that will vanish")
    z.store.set_ref("timm/resnet18.mnist-liar", z.store.refs()["lenet_300_100.mnist-s0"])  # a name that lies
    before = {name: z.card(name) for name in ("lenet_300_100.mnist-s0", "lenet_300_100.mnist-s1")}
    z.engine.dispose()
    catalog_engine._engines.clear()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{env / 'registry.db'}{suffix}").unlink(missing_ok=True)
    sha = z.store.refs()["gone.mnist-x"]
    z.store.object_path(sha).unlink()
    fresh = Zoo.from_env()
    assert fresh.list() == []
    report = fresh.reindex()
    assert sorted(report.added) == sorted(before)
    assert sorted(report.skipped) == ["gone.mnist-x", "timm/resnet18.mnist-liar"]
    assert {name: fresh.card(name) for name in before} == before
    z.store.remove_ref("gone.mnist-x")
    z.store.remove_ref("timm/resnet18.mnist-liar")
    put_fake(fresh, "stale.mnist-y", b"catalogued, then its file and ref are lost")
    fresh.store.object_path(fresh.store.refs().pop("stale.mnist-y")).unlink()
    fresh.store.remove_ref("stale.mnist-y")
    assert fresh.reindex().removed == ["stale.mnist-y"]
    assert [e["name"] for e in fresh.list()] == sorted(before)


def test_seeding_is_explicit_and_saves_the_fingerprint_only_when_complete(
        env: Path, caplog: pytest.LogCaptureFixture) -> None:
    shipped = env / "shipped"
    shipped.mkdir()
    make_artifact(shipped / "lenet_300_100.mnist-a.lnx", seed=0)
    make_artifact(shipped / "lenet_300_100.mnist-b.lnx", seed=1)
    (shipped / "not a name.lnx").write_bytes(b"ignored")
    (shipped / "lenet_300_100.mnist-junk.lnx").write_bytes(b"not an artifact")
    z = Zoo.from_env()
    assert z.list() == []  # building the zoo and reading it seed nothing
    with caplog.at_level(logging.WARNING):
        report = seed_shipped(z)
    assert "not seeding not a name.lnx" in caplog.text
    assert "not seeding lenet_300_100.mnist-junk.lnx" in caplog.text
    assert report.names == ["lenet_300_100.mnist-a", "lenet_300_100.mnist-b"]
    assert sorted(report.skipped) == ["lenet_300_100.mnist-junk.lnx", "not a name.lnx"]
    assert not seed_shipped(z).up_to_date  # files were skipped: no fingerprint, the next seeding tries again
    for junk in ("not a name.lnx", "lenet_300_100.mnist-junk.lnx"):
        (shipped / junk).unlink()
    assert seed_shipped(z).skipped == {} and seed_shipped(z).up_to_date
    z.remove("lenet_300_100.mnist-b")
    assert seed_shipped(z).up_to_date  # the folder did not change: no re-seeding
    assert [e["name"] for e in Zoo.from_env().list()] == ["lenet_300_100.mnist-a"]
    assert seed_shipped(z, force=True).names == ["lenet_300_100.mnist-a", "lenet_300_100.mnist-b"]
    assert seed(z, shipped).names == ["lenet_300_100.mnist-a", "lenet_300_100.mnist-b"]
    assert len(z.list()) == 2


def test_an_empty_catalog_is_seeded_once_on_first_use(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import zoo

    shipped = env / "shipped"
    shipped.mkdir()
    make_artifact(shipped / "lenet_300_100.mnist-a.lnx")
    assert zoo.list_models() == ["lenet_300_100.mnist-a"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "first use of this catalog: seeding it with the 1 models shipped" in err
    Zoo.from_env().remove("lenet_300_100.mnist-a")
    assert zoo.list_models() == [] and capsys.readouterr().err == ""  # once only: never a write on a read


def test_a_malformed_name_fails_before_first_use_seeding(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.cli import main

    shipped = env / "shipped"
    shipped.mkdir()
    make_artifact(shipped / "lenet_300_100.mnist-a.lnx")
    for verb in ("show", "verify", "pull"):
        assert main(["zoo", verb, "nosuch"]) == 2
        err = capsys.readouterr().err
        assert "invalid zoo entry name 'nosuch'" in err and "seeding" not in err, err
    assert Zoo.from_env().list() == []  # nothing was seeded


def test_a_read_only_catalog_lists_and_reads_write_nothing(env: Path, caplog: pytest.LogCaptureFixture) -> None:
    z = Zoo.from_env()
    put_fake(z, "tiny.mnist-a", b"a")
    site = env / "site"
    z.publish(str(site))
    put_fake(z, "tiny.mnist-b", b"b")
    z.engine.dispose()
    db = env / "registry.db"
    before = db.read_bytes()
    readonly = Zoo(get_engine(f"sqlite:///file:{db}?mode=ro&uri=true"), z.store, remote_url=site.as_uri(),
                   measure_timeout_s=0)
    with caplog.at_level(logging.WARNING):
        assert [e["name"] for e in readonly.list()] == ["tiny.mnist-a", "tiny.mnist-b"]  # nothing new to sync
    assert caplog.text == ""
    assert readonly.card("tiny.mnist-a")["name"] == "tiny.mnist-a"
    put_fake(local_zoo(env, "publisher"), "tiny.cifar10-c", b"c")
    local_zoo(env, "publisher").publish(str(site))
    mirror._synced.clear()  # a new process: the index is read again
    readonly = Zoo(readonly.engine, z.store, remote_url=site.as_uri(), measure_timeout_s=0)
    with caplog.at_level(logging.WARNING):
        assert [e["name"] for e in readonly.list()] == ["tiny.mnist-a", "tiny.mnist-b"]
    assert "the remote zoo's new entries are not listed: the catalog cannot record them" in caplog.text
    z.engine.dispose()
    assert db.read_bytes() == before


def test_a_catalog_sqlite_cannot_open_in_wal_mode_is_read_immutable(env: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only file in a read-only folder (root ignores permissions: SQLite's refusal is simulated)."""
    z = Zoo.from_env()
    put_fake(z, "tiny.mnist-a", b"a")
    z.engine.dispose()
    catalog_engine._engines.clear()
    opened: list[str] = []
    real_connect = sqlite3.connect

    class NoWal:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str) -> sqlite3.Cursor:
            if sql == "PRAGMA journal_mode=WAL":
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return self._conn.execute(sql)

        def close(self) -> None:
            self._conn.close()

    def connect(target: str, *args: object, uri: bool = False, **kwargs: object) -> object:
        conn = real_connect(target, *args, uri=uri, **kwargs)
        opened.append(target)
        return conn if uri else NoWal(conn)

    monkeypatch.setattr(catalog_engine.sqlite3, "connect", connect)
    readonly = Zoo.from_env()
    assert [e["name"] for e in readonly.list()] == ["tiny.mnist-a"]
    assert opened[-1].endswith("registry.db?immutable=1")
    with pytest.raises(CatalogError, match="attempt to write a readonly database"):
        put_fake(readonly, "tiny.mnist-b", b"b")
    readonly.engine.dispose()
    catalog_engine._engines.clear()


def test_seed_and_service_import_without_a_cycle() -> None:
    import subprocess
    import sys

    code = "import zoo.service, sys; assert 'zoo.seed' not in sys.modules, 'service imports seed'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_timm_artifacts_enter_the_zoo_and_ship_under_escaped_file_names(
        env: Path, timm_lnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    shipped = env / "shipped"
    shipped.mkdir()
    shutil.copy(timm_lnx, shipped / "timm%2Fmobilenetv3_small_050.digits-a.lnx")
    shutil.copy(timm_lnx, shipped / "timm%2fmobilenetv3_small_050.digits-b.lnx")  # not the canonical escape
    z = Zoo.from_env()
    with caplog.at_level(logging.WARNING):
        seed_shipped(z)
    assert "rename it 'timm%2Fmobilenetv3_small_050.digits-b'" in caplog.text
    name = "timm/mobilenetv3_small_050.digits-a"
    assert [e["name"] for e in z.list()] == [name] and z.list()[0]["verified"]
    assert z.card(name)["architecture"] == "timm/mobilenetv3_small_050"
    refs = env / "home" / "store" / "refs"
    assert [p.name for p in refs.iterdir()] == ["timm%2Fmobilenetv3_small_050.digits-a"]
    assert z.pull(name, env / "out") == env / "out" / "timm%2Fmobilenetv3_small_050.digits-a.lnx"
    assert seed(z, env / "out").names == [name]  # what `pull -o` writes seeds back to the same entry
    assert Zoo(get_engine(f"sqlite:///{env / 'lost.db'}"), z.store, measure_timeout_s=0).reindex().added == [name]
