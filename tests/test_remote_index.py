"""Parsing a remote zoo's ``index.json``: every field checked, bad entries skipped one by one, never a crash.

The fuzz tests throw arbitrary bytes and mutated entries at the parser and at ``lilnetx zoo list``: the
parser either returns valid entries or raises ``RemoteZooError``, and listing always exits 0 with the local
entries.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zoo_helpers import fake_record, put_fake

from zoo import remote
from zoo.catalog.records import ArtifactRecord, RecordError
from zoo.cli import main
from zoo.errors import RemoteZooError
from zoo.service import Zoo

SHA = "ab" * 32
_sites = itertools.count()


def _entry(name: str = "tiny.mnist-r", sha: str = SHA) -> dict[str, Any]:
    record = fake_record(sha, 100, arch=name.split(".")[0], dataset=name.split(".")[1].split("-")[0])
    return {"name": name, "dataset": record.dataset, "artifact": record.to_dict()}


def _write(folder: Path, entries: list[Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps({"format": remote.INDEX_FORMAT, "entries": entries}))
    return folder.as_uri()


def test_a_field_of_the_wrong_type_skips_only_its_entry(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The reported crash: ``metrics.fp32_bytes: "lots"`` made ``lilnetx zoo list`` die, local entries too."""
    put_fake(Zoo.from_env(), "local.mnist-a", b"local bytes")
    bad = _entry("tiny.mnist-bad")
    bad["artifact"]["metrics"]["fp32_bytes"] = "lots"
    monkeypatch.setenv("LILNETX_ZOO_URL", _write(env / "site", [bad, _entry("tiny.mnist-good", "cd" * 32)]))
    with caplog.at_level(logging.WARNING):
        code = main(["zoo", "list", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["local.mnist-a", "tiny.mnist-good"]
    assert ("skipping remote entry 'tiny.mnist-bad'" in caplog.text
            and "field metrics.fp32_bytes: expected an integer >= 0, got 'lots'" in caplog.text)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("artifact", "metrics", "top1"), 1.5, "field metrics.top1: expected a number in [0, 1] or null, got 1.5"),
    (("artifact", "metrics", "params"), -1, "field metrics.params: expected an integer >= 0"),
    (("artifact", "metrics", "conv_slice_sparsity"), True, "field metrics.conv_slice_sparsity: expected a number"),
    (("artifact", "metrics", "estimated_bits"), float("nan"), "field metrics.estimated_bits"),
    (("artifact", "size_bytes"), 0, "field size_bytes: expected an integer in [1, "),
    (("artifact", "input_size"), [1, "28"], "field input_size: expected a list of 1 to 4 integers"),
    (("artifact", "mean"), "0.5", "field mean"),
    (("artifact", "sha256"), "AB" * 32, "field sha256: expected a sha256"),
    (("artifact", "layers"), [{"name": "fc"}], "field layers[0].latent_group"),
    (("artifact", "layers"), "fc", "field layers: expected a list"),
    (("artifact", "arch_kwargs"), [], "field arch_kwargs: expected a JSON object"),
    (("artifact", "metrics", "surprise"), 1, "field metrics.surprise: expected no such field"),
    (("artifact", "arch"), "other", "field artifact.arch: expected the name's architecture 'tiny'"),
    (("dataset",), "cifar10", "field dataset: expected the tag's dataset 'mnist'"),
    (("name",), "../x.mnist-r", "field name: invalid zoo entry name"),
    (("artifact",), None, "field artifact: expected a JSON object"),
])
def test_every_field_is_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture, path: tuple[str, ...],
                                value: object, message: str) -> None:
    entry = _entry()
    target = entry
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with caplog.at_level(logging.WARNING):
        assert remote.fetch_index(_write(tmp_path / "site", [entry, _entry("tiny.mnist-ok")])) != []
    assert [e.name for e in remote.fetch_index((tmp_path / "site").as_uri())] == ["tiny.mnist-ok"]
    assert message in caplog.text


def test_a_version_1_index_is_read_with_its_sparsity_recomputed_from_the_layers(tmp_path: Path) -> None:
    """Version 1 records held one mixed ``slice_sparsity``: conv slice and weight sparsity come from the layers."""
    entry = _entry()
    artifact = entry["artifact"]
    for record in (artifact["metrics"], *artifact["layers"]):
        record["slice_sparsity"] = record.pop("conv_slice_sparsity") or 0.9
        record["unstructured_sparsity"] = record.pop("weight_sparsity")
    artifact["layers"].append({**artifact["layers"][0], "name": "fc", "shape": [10, 360], "params": 3600,
                               "slice_sparsity": 0.9, "unstructured_sparsity": 0.9})
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps({"format": "lilnetx-zoo-index/1", "entries": [entry]}))
    (parsed,) = remote.fetch_index(folder.as_uri())
    metrics = parsed.artifact.metrics
    assert metrics.conv_slice_sparsity == 0.5  # the 3x3 conv's slices only, not the linear layer's weights
    assert metrics.weight_sparsity == pytest.approx((180 + 3240) / 3960)
    assert [x.conv_slice_sparsity for x in parsed.artifact.layers] == [0.5, None]


def test_a_valid_record_round_trips_and_ints_become_floats() -> None:
    record = fake_record(SHA, 100)
    assert ArtifactRecord.from_dict(record.to_dict()) == record
    data = record.to_dict()
    data["metrics"]["weight_sparsity"] = 1
    parsed = ArtifactRecord.from_dict(data).metrics.weight_sparsity
    assert parsed == 1.0 and isinstance(parsed, float)
    with pytest.raises(RecordError, match="field artifact: expected a JSON object"):
        ArtifactRecord.from_dict([])


# -- fuzz ------------------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key / index path into a JSON value."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, (*prefix, i))
    return found


_TEMPLATE = _entry()
_PATHS = _paths(_TEMPLATE)


@st.composite
def _mutated_entries(draw: st.DrawFn) -> Any:
    """A valid entry with a few fields replaced by arbitrary JSON or deleted (or, rarely, arbitrary JSON)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_json)
    entry = copy.deepcopy(_TEMPLATE)
    entry["artifact"]["sha256"] = draw(st.sampled_from(["ab" * 32, "cd" * 32, "ef" * 32]))
    for path in draw(st.lists(st.sampled_from(_PATHS), max_size=3)):
        target = entry
        try:
            for key in path[:-1]:
                target = target[key]
            if draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = draw(_json)
        except (KeyError, IndexError, TypeError):  # an earlier mutation replaced a parent
            continue
    return entry


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_fuzz_the_parser_never_fails_otherwise(raw: bytes) -> None:
    try:
        entries = remote.parse_index(raw, "fuzz://index.json")
    except RemoteZooError:
        return
    assert all(isinstance(e, remote.IndexEntry) for e in entries)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(_mutated_entries(), max_size=3))
def test_fuzz_mutated_entries_parse_or_are_skipped(entries: list[Any]) -> None:
    raw = json.dumps({"format": remote.INDEX_FORMAT, "entries": entries}).encode()
    for entry in remote.parse_index(raw, "fuzz://index.json"):
        assert entry.artifact.size_bytes > 0 and 0 <= entry.artifact.metrics.weight_sparsity <= 1
        json.dumps(entry.to_dict())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_mutated_entries(), max_size=3), raw=st.none() | st.binary(max_size=64))
def test_fuzz_zoo_list_never_crashes(env: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], entries: list[Any],
                                     raw: bytes | None) -> None:
    if not Zoo.from_env().list("local.*"):
        put_fake(Zoo.from_env(), "local.mnist-a", b"local bytes")
    site = env / f"site{next(_sites)}"
    url = _write(site, entries)
    if raw is not None:
        (site / "index.json").write_bytes(raw)
    monkeypatch.setenv("LILNETX_ZOO_URL", url)
    for argv in (["zoo", "list"], ["zoo", "list", "--json", "--min-accuracy", "0.5"]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, err
    assert "local.mnist-a" in main_list_json(capsys)


def main_list_json(capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["zoo", "list", "--json"]) == 0
    return [row["name"] for row in json.loads(capsys.readouterr().out)]


def test_publishing_over_an_index_with_a_bad_entry_keeps_the_good_ones(env: Path) -> None:
    bad = _entry("tiny.mnist-bad")
    bad["artifact"]["metrics"]["params"] = "many"
    _write(env / "site", [bad, _entry("tiny.mnist-kept", "cd" * 32)])
    z = Zoo.from_env()
    put_fake(z, "local.mnist-a", b"local bytes")
    z.publish(str(env / "site"))
    names = [e.name for e in remote.fetch_index((env / "site").as_uri())]
    assert names == ["local.mnist-a", "tiny.mnist-kept"]


def test_a_remote_entry_is_found_by_name_without_listing_first(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILNETX_ZOO_URL", _write(env / "site", [_entry()]))
    card = Zoo.from_env().card("tiny.mnist-r")
    assert card["sha256"] == SHA and card["accuracy"] == {"top1": 0.9, "top5": 0.99, "measured": False}
