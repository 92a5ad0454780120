"""The content-addressed store, static zoos (publish / index / fetch) and pulling over file:// and http://."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from zoo_helpers import dead_url, http_zoo, isolate, local_zoo, make_artifact, put_fake

from zoo import remote
from zoo.errors import ChecksumError, EntryNotFoundError, InvalidNameError, OfflineError, RemoteZooError
from zoo.service import Zoo
from zoo.store import Store

DATA = b"not really an artifact, but bytes with a hash" * 20


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate(tmp_path, monkeypatch)
    return tmp_path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _published(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A static zoo folder with two entries, published from a throw-away local zoo."""
    source = local_zoo(tmp_path, "publisher")
    blobs = {"tiny.mnist-a": DATA, "tiny.cifar10-b": DATA[::-1]}
    for name, data in blobs.items():
        put_fake(source, name, data)
    source.publish(str(tmp_path / "site"))
    return tmp_path / "site", blobs


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


@pytest.mark.parametrize("name", ["../evil", "a/b.c", "..", "a.b/../../c", "a..b", "a.b.c", ".a.b", "a.",
                                  "a b.c", "a.b\x00", ""])
def test_ref_names_cannot_escape_the_store(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        Store(tmp_path).set_ref(name, "a" * 64)


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


def test_malformed_index_is_rejected(tmp_path: Path) -> None:
    site, _ = _published(tmp_path)
    index = json.loads((site / "index.json").read_text())
    index["entries"][0]["name"] = "../../etc.passwd"
    (site / "index.json").write_text(json.dumps(index))
    with pytest.raises(RemoteZooError, match="malformed zoo index"):
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


def test_pull_from_a_file_zoo_and_refetch_a_corrupt_cached_copy(env: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    site, blobs = _published(env)
    monkeypatch.setenv("LILNETX_ZOO_URL", site.as_uri())
    z = Zoo.from_env()
    assert [e["name"] for e in z.list()] == sorted(blobs)
    path = z.pull("tiny.mnist-a")
    assert path.read_bytes() == DATA
    path.chmod(0o644)
    path.write_bytes(b"bit rot")
    assert Zoo.from_env().pull("tiny.mnist-a").read_bytes() == DATA
    copy = z.pull("tiny.mnist-a", env / "out")
    assert copy == env / "out" / "tiny.mnist-a.lnx" and copy.read_bytes() == DATA


# -- http ----------------------------------------------------------------------------------------------------

def test_pull_over_http(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, blobs = _published(env)
    with http_zoo(site) as url:
        monkeypatch.setenv("LILNETX_ZOO_URL", url)
        z = Zoo.from_env()
        assert [e["name"] for e in z.list(dataset="cifar10")] == ["tiny.cifar10-b"]
        for name, data in blobs.items():
            assert z.pull(name).read_bytes() == data


def test_http_server_serving_a_corrupted_file_is_rejected(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, _ = _published(env)
    with http_zoo(site, corrupt=True) as url:
        monkeypatch.setenv("LILNETX_ZOO_URL", url)
        z = Zoo.from_env()
        with pytest.raises(ChecksumError, match="rejected"):
            z.pull("tiny.mnist-a")
    assert not list((env / "home" / "store" / "objects").rglob("*.lnx"))


def test_http_server_down_gives_clear_error_and_cache_still_used(
        env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    site, _ = _published(env)
    with http_zoo(site) as url:
        monkeypatch.setenv("LILNETX_ZOO_URL", url)
        Zoo.from_env().pull("tiny.mnist-a")  # cached from now on; tiny.cifar10-b is not
    monkeypatch.setenv("LILNETX_ZOO_URL", dead_url())
    with caplog.at_level(logging.WARNING):
        z = Zoo.from_env()
    assert "using the local catalog only" in caplog.text
    assert z.pull("tiny.mnist-a").read_bytes() == DATA
    with pytest.raises(RemoteZooError, match="cannot download the artifact .*LILNETX_OFFLINE=1"):
        z.pull("tiny.cifar10-b")
    with pytest.raises(EntryNotFoundError, match="remote zoo could not be read"):
        z.pull("tiny.mnist-zzz")


def test_offline_uses_the_cache_only_and_says_what_is_missing(env: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    site, _ = _published(env)
    monkeypatch.setenv("LILNETX_ZOO_URL", site.as_uri())
    Zoo.from_env().pull("tiny.mnist-a")
    monkeypatch.setenv("LILNETX_OFFLINE", "1")
    z = Zoo.from_env()
    assert z.pull("tiny.mnist-a").read_bytes() == DATA
    with pytest.raises(OfflineError, match="tiny.cifar10-b .*not in the local cache.*LILNETX_OFFLINE=1"):
        z.pull("tiny.cifar10-b")


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
    with pytest.raises(NotImplementedError, match="later feature"):
        zoo.load("lenet_300_100.mnist-a", slim=True)
