"""Measured vs claimed accuracy: ``zoo.measure``, ``zoo add``, the first pull of a remote entry, ``zoo verify``.

The artifacts are small random LeNet-300-100s on scikit-learn digits (360 test images, offline): their
measured accuracy is whatever the random weights give, so a header claiming 90 % lies.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader
from zoo_helpers import local_zoo, make_artifact

import lilnetx
from zoo import registry
from zoo.cli import main
from zoo.errors import MeasurementUnavailable, UnverifiedArtifactError, ZooError
from zoo.measure import measure, timeout_from_env
from zoo.service import Zoo

DIGITS = {"arch_kwargs": {"input_size": (1, 8, 8)}, "dataset": "digits"}
NAME = "lenet_300_100.digits-a"


@pytest.fixture
def env(env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared isolated zoo, with measuring on (these tests measure real accuracy)."""
    monkeypatch.setenv("LILNETX_MEASURE_TIMEOUT", "120")
    return env


@pytest.fixture(scope="module")
def true_top1(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The accuracy of the seed-0 digits model, computed independently of ``zoo.measure``."""
    path = make_artifact(tmp_path_factory.mktemp("truth") / "a.lnx", top1=None, keep=0.5, **DIGITS)
    test = registry.get_dataset("digits", augment=False).test
    return lilnetx.evaluate(lilnetx.load(path), DataLoader(test, batch_size=100))["top1"]


def _artifact(folder: Path, top1: float | None, name: str = "a.lnx") -> Path:
    return make_artifact(folder / name, top1=top1, keep=0.5, **DIGITS)


def test_measure_agrees_with_an_independent_evaluation(env: Path, true_top1: float) -> None:
    path = _artifact(env, None)
    measured = measure(lilnetx.load(path), lilnetx.read_header(path))
    assert (measured.dataset, measured.images) == ("digits", 360)
    assert measured.top1 == pytest.approx(true_top1) and measured.top1 <= measured.top5 <= 1


def test_unavailable_data_or_time_keep_the_claim(env: Path) -> None:
    path = _artifact(env, 0.9)
    model, header = lilnetx.load(path), lilnetx.read_header(path)
    with pytest.raises(MeasurementUnavailable, match="took longer than 1e-09 s.*LILNETX_MEASURE_TIMEOUT"):
        measure(model, header, timeout_s=1e-9)
    with pytest.raises(MeasurementUnavailable, match="measuring is off"):
        measure(model, header, timeout_s=0)
    with pytest.raises(MeasurementUnavailable, match="'cifar10' is read from files.*LILNETX_DATA_ROOT"):
        measure(model, {**header, "dataset": "cifar10"})
    with pytest.raises(MeasurementUnavailable, match="no folder"):
        measure(model, {**header, "dataset": "cifar10"}, data_root=env / "nowhere")
    with pytest.raises(MeasurementUnavailable, match="expects input size \\[1, 28, 28\\]"):
        measure(model, {**header, "input_size": [1, 28, 28]})
    with pytest.raises(MeasurementUnavailable, match="unknown dataset 'nope'"):
        measure(model, {**header, "dataset": "nope"})


def test_add_stores_claimed_and_measured_and_shows_the_measured(env: Path, true_top1: float,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    z = Zoo.from_env()
    with caplog.at_level(logging.WARNING):
        z.add(_artifact(env, 0.9999), "digits-a")
    assert "claimed 99.99 %, measured" in caplog.text  # a local add is kept, and the lie said out loud
    card = z.card(NAME)
    assert card["accuracy"]["measured"] and card["accuracy"]["top1"] == pytest.approx(true_top1)
    assert card["claimed_accuracy"] == {"top1": 0.9999, "top5": 0.99}
    assert card["measured_on"]["dataset"] == "digits" and card["measured_on"]["images"] == 360
    row = z.list()[0]
    assert row["top1"] == row["accuracy"]["top1"] == card["accuracy"]["top1"]
    assert row["claimed_accuracy"] == card["claimed_accuracy"]
    assert z.list(min_accuracy=0.99) == []  # filters use the measured figure, not the claim
    assert [r["name"] for r in z.list(min_accuracy=true_top1)] == [NAME]


def test_add_without_the_dataset_stays_claimed_only(env: Path, caplog: pytest.LogCaptureFixture,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = make_artifact(env / "c.lnx", top1=0.8, arch_kwargs={"input_size": (3, 32, 32)}, dataset="cifar10")
    with caplog.at_level(logging.WARNING):
        assert main(["zoo", "add", str(path), "--tag", "cifar10-a"]) == 0
    assert "keeps only the accuracy its header claims: dataset 'cifar10' is read from files" in caplog.text
    capsys.readouterr()
    assert main(["zoo", "list"]) == 0
    assert "80.00 % (claimed)" in capsys.readouterr().out
    card = Zoo.from_env().card("lenet_300_100.cifar10-a")
    assert card["accuracy"] == {"top1": 0.8, "top5": 0.99, "measured": False} and card["measured_on"] is None
    assert main(["zoo", "show", "lenet_300_100.cifar10-a", "--markdown"]) == 0
    assert "80.00 % / 99.00 % (claimed by the artifact, not measured here)" in capsys.readouterr().out


def test_a_remote_entry_claiming_more_than_it_measures_is_rejected(env: Path, true_top1: float,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = local_zoo(env, "publisher")
    publisher.add(_artifact(env, 0.9, "liar.lnx"), "digits-liar")
    honest = make_artifact(env / "honest.lnx", top1=true_top1, keep=0.5, **DIGITS)
    publisher.add(honest, "digits-honest")
    publisher.publish(str(env / "site"))
    monkeypatch.setenv("LILNETX_ZOO_URL", (env / "site").as_uri())
    z = Zoo.from_env()
    with pytest.raises(UnverifiedArtifactError, match=f"metrics.top1: claimed 90.00 %, measured "
                                                      f"{100 * true_top1:.2f} % on 360 digits test images.*"
                                                      "nothing was stored"):
        z.pull("lenet_300_100.digits-liar")
    assert not list((env / "home" / "store" / "objects").rglob("*.lnx"))
    z.pull("lenet_300_100.digits-honest")
    row = z.list("*honest")[0]
    assert row["verified"] and row["accuracy"]["measured"] and row["top1"] == pytest.approx(true_top1)


def test_verify_measures_on_demand_and_fails_on_a_lying_claim(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LILNETX_MEASURE_TIMEOUT", "0")  # add without measuring
    Zoo.from_env().add(_artifact(env, 0.9), "digits-a")
    assert not Zoo.from_env().card(NAME)["accuracy"]["measured"]
    code = main(["zoo", "verify", NAME, "--json"])  # an explicit verify measures anyway
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 1 and "the header's claim is not believable: metrics.top1: claimed 90.00 %" in captured.err
    assert result["accuracy"]["measured"] and result["measured_on"]["images"] == 360
    assert Zoo.from_env().card(NAME)["accuracy"] == result["accuracy"]
    code = main(["zoo", "verify", NAME, "--measure-timeout", "1e-9"])
    assert code == 2 and "took longer than" in capsys.readouterr().err


def test_verify_of_a_remote_entry_measures_once(env: Path, true_top1: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pull of a remote entry measures it to check the index; verify reports that measurement."""
    publisher = local_zoo(env, "publisher")
    publisher.add(make_artifact(env / "honest.lnx", top1=true_top1, keep=0.5, **DIGITS), "digits-a")
    publisher.publish(str(env / "site"))
    monkeypatch.setenv("LILNETX_ZOO_URL", (env / "site").as_uri())
    import zoo.measure

    calls = []
    monkeypatch.setattr(zoo.measure, "measure", lambda *a, **k: calls.append(1) or measure(*a, **k))
    result = Zoo.from_env().verify(NAME)
    assert len(calls) == 1 and result["accuracy"]["top1"] == pytest.approx(true_top1)
    Zoo.from_env().verify(NAME)  # already pulled and checked: verify measures afresh
    assert len(calls) == 2


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx file of unsigned bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_datasets_read_from_files_are_found_under_the_data_root(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = env / "data" / "mnist-idx"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 7)):
        _write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    path = make_artifact(env / "idx.lnx", top1=0.5, dataset="mnist-idx")
    model, header = lilnetx.load(path), lilnetx.read_header(path)
    monkeypatch.setenv("LILNETX_DATA_ROOT", str(env / "data"))  # a folder with one sub-folder per dataset
    assert (measure(model, header).dataset, measure(model, header).images) == ("mnist-idx", 7)
    monkeypatch.delenv("LILNETX_DATA_ROOT")
    assert measure(model, header, data_root=folder).images == 7  # or the dataset's own folder
    z = Zoo.from_env()
    z.data_root = folder
    z.add(path, "mnist-idx-a")
    assert z.card("lenet_300_100.mnist-idx-a")["measured_on"]["images"] == 7


def test_a_dataset_with_a_default_folder_is_measured_without_a_data_root(env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from plugins import datasets

    folder = env / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 9)):
        _write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    monkeypatch.setattr(datasets, "FASHION_MNIST_ROOT", folder)
    monkeypatch.setattr(datasets.fashion_mnist, "__defaults__", (folder,))  # as if Debian's package were there
    monkeypatch.delenv("LILNETX_DATA_ROOT", raising=False)
    path = make_artifact(env / "f.lnx", top1=0.5, dataset="fashion-mnist")
    assert measure(lilnetx.load(path), lilnetx.read_header(path)).images == 9


def test_malformed_timeout_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILNETX_MEASURE_TIMEOUT", "soon")
    with pytest.raises(ZooError, match="LILNETX_MEASURE_TIMEOUT='soon' is not a number of seconds"):
        timeout_from_env()
    monkeypatch.setenv("LILNETX_MEASURE_TIMEOUT", " ")
    assert timeout_from_env() == 300.0
