"""The content-addressed store, static zoos (publish / index / fetch) and pulling over file:// and http://.

Transport-only tests use fake bytes; every pull from a remote zoo uses real artifacts, because a pull
decodes what it fetched and checks it against the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from zoo_helpers import dead_url, http_zoo, local_zoo, make_artifact, put_fake

from zoo import remote
from zoo.catalog.engine import get_engine
from zoo.errors import (
    ChecksumError,
    EntryNotFoundError,
    InvalidNameError,
    OfflineError,
    RemoteZooError,
    UnverifiedArtifactError,
)
from zoo.service import Zoo
from zoo.store import Store

DATA = b"not really an artifact, but bytes with a hash" * 20
LENET, TIMM = "lenet_300_100.mnist-a", "timm/mobilenetv3_small_050.digits-b"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _published(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A static zoo folder with two entries of fake bytes, published from a throw-away local zoo."""
    source = local_zoo(tmp_path, "publisher")
    blobs = {"tiny.mnist-a": DATA, "tiny.cifar10-b": DATA[::-1]}
    for name, data in blobs.items():
        put_fake(source, name, data)
    source.publish(str(tmp_path / "site"))
    return tmp_path / "site", blobs


@pytest.fixture(scope="module")
def real_site(tmp_path_factory: pytest.TempPathFactory, timm_lnx: Path) -> tuple[Path, dict[str, bytes]]:
    """A static zoo of two real artifacts (LENET and TIMM), published once per module."""
    root = tmp_path_factory.mktemp("real")
    source = local_zoo(root, "publisher")
    source.add(make_artifact(root / "lenet.lnx"), "mnist-a")
    source.add(timm_lnx, "digits-b")
    source.publish(str(root / "site"))
    return root / "site", {name: source.pull(name).read_bytes() for name in (LENET, TIMM)}


@pytest.fixture
def site(real_site: tuple[Path, dict[str, bytes]], tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """This test's own copy of ``real_site``."""
    shutil.copytree(real_site[0], tmp_path / "site")
    return tmp_path / "site", real_site[1]


# -- store -------------------------------------------------------------------------------------------------

def test_store_round_trip_is_read_only_and_idempotent(tmp_path: Path) -> None:
    store, src = Store(tmp_path / "store"), tmp_path / "a.lnx"
    src.write_bytes(DATA)
    sha, path = store.put_file(src)
    assert sha == _sha(DATA) and path == store.object_path(sha) and path.read_bytes() == DATA
    assert not os.stat(path).st_mode & 0o222
    assert store.put_file(src) == (sha, path)
    assert store.get(sha) == path


def test_corrupt_cached_file_is_quarantined_not_served(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    store, src = Store(tmp_path / "store"), tmp_path / "a.lnx"
    src.write_bytes(DATA)
    sha, path = store.put_file(src)
    path.chmod(0o644)
    path.write_bytes(DATA[:-1] + b"!")
    with caplog.at_level(logging.WARNING):
        assert store.get(sha) is None
    assert "corrupt" in caplog.text and not path.exists()
    assert [p.read_bytes() for p in (store.root / "quarantine").iterdir()] == [DATA[:-1] + b"!"]


def test_stream_with_wrong_hash_or_too_many_bytes_stores_nothing(tmp_path: Path) -> None:
    store, src = Store(tmp_path / "store"), tmp_path / "a.lnx"
    src.write_bytes(DATA)
    with open(src, "rb") as f, pytest.raises(ChecksumError, match="not the expected"):
        store.put_stream("0" * 64, f)
    with open(src, "rb") as f, pytest.raises(ChecksumError, match="more than the 10 bytes"):
        store.put_stream(_sha(DATA), f, size=10)
    assert not [p for p in store.root.rglob("*") if p.is_file()]


def test_an_unwritable_destination_names_the_file_asked_for(tmp_path: Path) -> None:
    import re

    from lilnetx.files import atomic_write

    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    with pytest.raises(OSError, match=re.escape(f"cannot write {blocker / 'sub' / 'a.lnx'}: ") + ".*writable folder"):
        atomic_write(blocker / "sub" / "a.lnx", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("name", ["../evil", "..", "a.b/../../c", "a..b", ".a.b", "a.", "a b.c", "a.b\x00", "",
                                  "/a.b", "a/.b", "a//b.c", "a/./b.c", "a/../b.c", "x/a..b.c", "a/b/.c", "a\\b.c",
                                  "a%2Fb.c", "a/b.c/d", f"{'a/' * 32}b.c"])
def test_ref_names_cannot_escape_the_store(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        Store(tmp_path).set_ref(name, "a" * 64)


def test_names_with_a_slash_are_stored_under_escaped_file_names(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    store.set_ref("timm/resnet18.mnist-a", "a" * 64)
    store.set_ref("hub/org/net.v2.cifar10-b", "b" * 64)
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["hub%2Forg%2Fnet.v2.cifar10-b",
                                                                     "timm%2Fresnet18.mnist-a"]
    (tmp_path / "refs" / "timm%2fresnet18.mnist-c").write_text("c" * 64)  # not the canonical escape
    (tmp_path / "refs" / "%2E%2E%2Fx.mnist-d").write_text("d" * 64)
    with caplog.at_level(logging.WARNING):
        assert store.refs() == {"timm/resnet18.mnist-a": "a" * 64, "hub/org/net.v2.cifar10-b": "b" * 64}
    assert "rename it 'timm%2Fresnet18.mnist-c'" in caplog.text and "'../x.mnist-d'" in caplog.text
    assert store.ref("timm/resnet18.mnist-a") == "a" * 64
    store.remove_ref("timm/resnet18.mnist-a")
    assert list(store.refs()) == ["hub/org/net.v2.cifar10-b"]


def test_refs_and_malformed_ref_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    store.set_ref("lenet.mnist-a", "a" * 64)
    store.set_ref("lenet.mnist-b", "b" * 64)
    store.remove_ref("lenet.mnist-b")
    (tmp_path / "refs" / "lenet.mnist-c").write_text("not a digest")
    with caplog.at_level(logging.WARNING):
        assert store.refs() == {"lenet.mnist-a": "a" * 64}
    assert "malformed ref" in caplog.text
    with pytest.raises(InvalidNameError):
        store.object_path("../" + "a" * 61)


# -- static zoo --------------------------------------------------------------------------------------------

def test_publish_writes_index_and_content_addressed_artifacts(tmp_path: Path) -> None:
    site, blobs = _published(tmp_path)
    index = json.loads((site / "index.json").read_text())
    assert index["format"] == remote.INDEX_FORMAT
    assert [e["name"] for e in index["entries"]] == sorted(blobs)
    for data in blobs.values():
        assert (site / "artifacts" / _sha(data)[:2] / f"{_sha(data)}.lnx").read_bytes() == data
    other = local_zoo(tmp_path, "other")
    put_fake(other, "tiny.mnist-c", b"third")
    other.publish(str(site))  # merges: entries published by others stay
    names = [e.name for e in remote.fetch_index(str(site))]
    assert names == ["tiny.cifar10-b", "tiny.mnist-a", "tiny.mnist-c"]
    assert not list(site.rglob("*.partial-*"))


def test_malformed_entry_is_skipped_and_malformed_index_rejected(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    site, _ = _published(tmp_path)
    index = json.loads((site / "index.json").read_text())
    index["entries"][0]["name"] = "../../etc.passwd"
    (site / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING):
        assert [e.name for e in remote.fetch_index(str(site))] == ["tiny.mnist-a"]
    assert "skipping remote entry '../../etc.passwd'" in caplog.text and "field name: invalid" in caplog.text
    (site / "index.json").write_text(json.dumps(index["entries"]))
    with pytest.raises(RemoteZooError, match="malformed zoo index .*format 'list'"):
        remote.fetch_index(str(site))


@pytest.mark.parametrize("uri", ["http://host/zoo/artifacts/aa/{sha}.lnx/../../../../etc/passwd",
                                 "http://host/../artifacts/{p}/{sha}.lnx", "http://host/{sha}.lnx",
                                 "file:///etc/passwd"])
def test_artifact_uris_must_be_content_addressed(uri: str) -> None:
    sha = "ab" * 32
    with pytest.raises(InvalidNameError):
        remote.check_artifact_url(uri.format(sha=sha, p=sha[:2]), sha)
    url = remote.artifact_url("s3://bucket/zoo/", sha)
    assert remote.check_artifact_url(url, sha) == f"s3://bucket/zoo/artifacts/ab/{sha}.lnx"


def test_pull_from_a_file_zoo_checks_the_artifact_and_refetches_a_corrupt_cached_copy(
        env: Path, site: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, blobs = site
    monkeypatch.setenv("LILNETX_ZOO_URL", folder.as_uri())
    z = Zoo.from_env()
    assert [(e["name"], e["verified"]) for e in z.list()] == [(LENET, False), (TIMM, False)]
    path = z.pull(LENET)
    assert path.read_bytes() == blobs[LENET]
    assert [e["verified"] for e in z.list()] == [True, False]
    path.chmod(0o644)
    path.write_bytes(b"bit rot")
    assert Zoo.from_env().pull(LENET).read_bytes() == blobs[LENET]
    copy = z.pull(TIMM, env / "out")
    assert copy == env / "out" / "timm%2Fmobilenetv3_small_050.digits-b.lnx" and copy.read_bytes() == blobs[TIMM]
    assert z.store.refs() == {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}


@pytest.mark.parametrize(("field", "lie", "message"), [
    ("arch", "timm/resnet18", "arch: claimed 'timm/resnet18', the artifact says 'lenet_300_100'"),
    ("size_bytes", 1, "size_bytes: claimed {size_bytes}, the artifact says {true}"),
    ("weight_sparsity", 0.999, "metrics.weight_sparsity: claimed 0.999"),
    ("top1", 0.999, "metrics.top1: claimed 0.999, the artifact says 0.9"),
])
def test_an_index_that_lies_about_its_artifact_is_rejected(env: Path, site: tuple[Path, dict[str, bytes]],
                                                           monkeypatch: pytest.MonkeyPatch, field: str,
                                                           lie: object, message: str) -> None:
    folder, blobs = site
    honest = shutil.copytree(folder, env / "honest")
    index = json.loads((folder / "index.json").read_text())
    item = next(e for e in index["entries"] if e["name"] == LENET)
    if field == "arch":
        item["name"], item["artifact"]["arch"] = f"{lie}.mnist-a", lie
    elif field == "size_bytes":
        item["artifact"]["size_bytes"] += lie  # one byte more than the file: the download itself passes
    else:
        item["artifact"]["metrics"][field] = lie
    (folder / "index.json").write_text(json.dumps(index))
    name, sha = item["name"], item["artifact"]["sha256"]
    message = message.format(size_bytes=len(blobs[LENET]) + 1, true=len(blobs[LENET]))
    monkeypatch.setenv("LILNETX_ZOO_URL", folder.as_uri())
    z = Zoo.from_env()
    with pytest.raises(UnverifiedArtifactError, match=f"{name}: the index of the zoo at {folder.as_uri()} does "
                                                      f"not describe its artifact.*{message}.*nothing was stored"):
        z.pull(name)
    objects = env / "home" / "store" / "objects"
    assert not [p for p in objects.rglob("*") if p.is_file()] and z.store.refs() == {}
    assert z.list(name)[0]["verified"] is False
    # the same bytes, pulled through an honest index into another catalog sharing the store, are still
    # not what the lying index claims: rejected again, and the stored file is left alone
    other = Zoo(get_engine(f"sqlite:///{env / 'other.db'}"), z.store, honest.as_uri(), measure_timeout_s=0)
    other.sync_remote()
    assert other.pull(LENET) == z.store.object_path(sha)
    with pytest.raises(UnverifiedArtifactError, match=message):
        z.pull(name)
    assert z.store.get(sha) == z.store.object_path(sha)


def test_adding_the_real_file_drops_entries_from_a_lying_index(env: Path, site: tuple[Path, dict[str, bytes]],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    folder, blobs = site
    index = json.loads((folder / "index.json").read_text())
    item = next(e for e in index["entries"] if e["name"] == LENET)
    item["name"], item["artifact"]["arch"] = "timm/resnet18.mnist-a", "timm/resnet18"
    (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.setenv("LILNETX_ZOO_URL", folder.as_uri())
    z = Zoo.from_env()
    assert len(z.list()) == 2  # the first read syncs the remote index
    (env / "real.lnx").write_bytes(blobs[LENET])
    with caplog.at_level(logging.WARNING):
        assert z.add(env / "real.lnx", "mnist-local") == "lenet_300_100.mnist-local"
    assert "dropping timm/resnet18.mnist-a: the remote index it came from does not describe" in caplog.text
    assert [(e["name"], e["verified"]) for e in z.list()] == [("lenet_300_100.mnist-local", True), (TIMM, False)]
    with caplog.at_level(logging.WARNING):
        z.sync_remote()  # the lie is refused from now on
    assert "skipping remote entry timm/resnet18.mnist-a: the index does not describe its artifact" in caplog.text
    assert [e["name"] for e in z.list()] == ["lenet_300_100.mnist-local", TIMM]


def test_an_index_pointing_at_bytes_that_are_no_artifact_is_rejected(env: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = _published(env)
    monkeypatch.setenv("LILNETX_ZOO_URL", folder.as_uri())
    with pytest.raises(UnverifiedArtifactError, match="cannot check tiny.mnist-a .*not a LilNetX .lnx artifact"):
        Zoo.from_env().pull("tiny.mnist-a")
    assert not [p for p in (env / "home" / "store").rglob("*") if p.is_file()]


# -- http ----------------------------------------------------------------------------------------------------

def test_pull_over_http(env: Path, site: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, blobs = site
    with http_zoo(folder) as url:
        monkeypatch.setenv("LILNETX_ZOO_URL", url)
        z = Zoo.from_env()
        assert [e["name"] for e in z.list(dataset="digits")] == [TIMM]
        for name, data in blobs.items():
            assert z.pull(name).read_bytes() == data


def test_http_server_serving_a_corrupted_file_is_rejected(env: Path, site: tuple[Path, dict[str, bytes]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with http_zoo(site[0], corrupt=True) as url:
        monkeypatch.setenv("LILNETX_ZOO_URL", url)
        z = Zoo.from_env()
        with pytest.raises(ChecksumError, match="rejected"):
            z.pull(LENET)
    assert not list((env / "home" / "store" / "objects").rglob("*.lnx"))


def test_http_server_down_gives_clear_error_and_cache_still_used(
        env: Path, site: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    folder, blobs = site
    with http_zoo(folder) as url:
        monkeypatch.setenv("LILNETX_ZOO_URL", url)
        Zoo.from_env().pull(LENET)  # cached from now on; TIMM is not
    monkeypatch.setenv("LILNETX_ZOO_URL", dead_url())
    z = Zoo.from_env()
    assert z.pull(LENET).read_bytes() == blobs[LENET]  # catalogued and cached: the remote is not consulted
    with pytest.raises(RemoteZooError, match="cannot download the artifact .*LILNETX_OFFLINE=1"):
        z.pull(TIMM)
    with caplog.at_level(logging.WARNING), pytest.raises(EntryNotFoundError, match="remote zoo could not be read"):
        z.pull("lenet_300_100.mnist-zzz")  # unknown here: the index is read, and cannot be
    assert "using the local catalog only" in caplog.text
    assert [e["name"] for e in z.list()] == [LENET, TIMM]


def test_offline_uses_the_cache_only_and_says_what_is_missing(env: Path, site: tuple[Path, dict[str, bytes]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder, blobs = site
    monkeypatch.setenv("LILNETX_ZOO_URL", folder.as_uri())
    Zoo.from_env().pull(LENET)
    monkeypatch.setenv("LILNETX_OFFLINE", "1")
    z = Zoo.from_env()
    assert z.pull(LENET).read_bytes() == blobs[LENET]
    with pytest.raises(OfflineError, match=f"{TIMM} .*not in the local cache.*LILNETX_OFFLINE=1"):
        z.pull(TIMM)


def test_artifact_missing_everywhere_names_the_fix(env: Path) -> None:
    z = Zoo.from_env()
    put_fake(z, "tiny.mnist-a", DATA)
    path = z.store.get(_sha(DATA))
    assert path is not None
    path.unlink()
    with pytest.raises(EntryNotFoundError, match="LILNETX_ZOO_URL"):
        z.pull("tiny.mnist-a")


def test_public_api_list_pull_load(env: Path) -> None:
    import torch

    import lilnetx
    import zoo

    path = make_artifact(env / "a.lnx", top1=0.98)
    Zoo.from_env().add(path, "mnist-a")
    assert zoo.list_models("lenet*", dataset="mnist", min_accuracy=0.95) == ["lenet_300_100.mnist-a"]
    assert zoo.list_models(max_bytes=100) == [] and zoo.list_models(dataset="cifar10") == []
    pulled = zoo.pull("lenet_300_100.mnist-a", env / "out")
    assert pulled.read_bytes() == path.read_bytes()
    model = zoo.load("lenet_300_100.mnist-a")
    assert not model.training and not lilnetx.is_reparameterized(model)
    expected = lilnetx.load(path).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    slimmed = zoo.load("lenet_300_100.mnist-a", slim=True)  # same outputs (tests/test_slim.py checks more)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(slimmed(x), model(x), atol=1e-5)


def test_add_parses_the_file_once_and_a_cached_pull_hashes_it_once(env: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from lilnetx.artifact import reader, rebuild

    path = make_artifact(env / "a.lnx")
    data = path.read_bytes()
    hashes: list[int] = []
    parses: list[int] = []
    real_sha256, real_parse = hashlib.sha256, reader.parse

    class CountingSha256:
        """sha256 that counts how often the whole artifact goes through it."""

        def __init__(self, initial: bytes = b"") -> None:
            self._digest = real_sha256()
            self.update(initial)

        def update(self, chunk: bytes) -> None:
            hashes.extend([1] if chunk == data else [])
            self._digest.update(chunk)

        def hexdigest(self) -> str:
            return self._digest.hexdigest()

        def digest(self) -> bytes:
            return self._digest.digest()

    def counting_parse(raw: bytes, source: str):  # type: ignore[no-untyped-def]
        parses.append(1)
        return real_parse(raw, source)

    monkeypatch.setattr(hashlib, "sha256", CountingSha256)
    monkeypatch.setattr(reader, "parse", counting_parse)
    monkeypatch.setattr(rebuild, "parse", counting_parse)  # describe reads through rebuild.read_and_load
    z = Zoo.from_env()
    z.add(path, "mnist-a")
    assert len(parses) == 1  # read, verified and decoded once; hashed by the reader and by the store's copy
    assert len(hashes) == 2
    hashes.clear()
    assert z.pull("lenet_300_100.mnist-a").read_bytes() == data
    assert len(hashes) == 1
