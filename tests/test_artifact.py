"""The `.lnx` artifact: exact round trip, independent re-decode, honest sizes, atomic writes, every error."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from golden import make_golden as golden  # tests/ is on sys.path; golden/ holds the writer
from torch import nn
from torch.utils.data import TensorDataset

import lilnetx
from lilnetx import artifact
from lilnetx.artifact import (
    ArtifactError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptHeaderError,
    TruncatedArtifactError,
    UnknownArchitectureError,
    UnsupportedVersionError,
)
from lilnetx.training import TrainConfig, Trainer

GOLDEN_DIR = Path(__file__).parent / "golden"




@pytest.fixture(scope="module")
def trained_model() -> nn.Module:
    """The golden architecture trained briefly on synthetic data: realistic latents, densities and BN stats."""
    torch.manual_seed(0)
    x = torch.randn(384, 1, 8, 8)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0).long()
    model = lilnetx.reparameterize(golden.build(), density_filters=(2, 2))
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, density_lr=1e-2, lambda_rate=0.3, warmup_epochs=0,
                         device="cpu")
    Trainer(model, TensorDataset(x, y), None, config, progress=False).fit()
    model.lilnetx_arch = {"name": golden.ARCH, "kwargs": dict(golden.KWARGS)}
    model.pretrained_cfg = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.25,), "num_classes": 3}
    return model.eval()


@pytest.fixture
def model(trained_model) -> nn.Module:
    return copy.deepcopy(trained_model)


@pytest.fixture
def saved(model, tmp_path) -> Path:
    path = tmp_path / "model.lnx"
    lilnetx.save(model, path, metadata={"dataset": "synthetic", "metrics": {"top1": 0.75}, "run": "unit"})
    return path


def _resign(path: Path, edit) -> None:
    """Rewrite ``path`` with ``edit(header)`` applied and a correct size and checksum (a lying file)."""
    header, sections = artifact._parse(path.read_bytes(), str(path))
    edit(header)
    path.write_bytes(artifact._assemble(header, [sections[name] for name in artifact.SECTIONS]))


def _decoded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``strip(model)`` would have (without stripping: deep copies share torch's
    parametrized classes, so stripping a copy would break the original)."""
    decoded = {t.name: getattr(t.module, t.tensor_name).detach() for t in lilnetx.latent_tensors(model)}
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in f".{key}":
            state[key] = value
        elif key.endswith(".original"):
            name = key.replace("parametrizations.", "").removesuffix(".original")
            state[name] = decoded[name]
    return state


def _layer(header: dict, name: str) -> dict:
    return next(layer for layer in header["layers"] if layer["name"] == name)


# --------------------------------------------------------------------------- round trip


def test_round_trip_is_bit_exact(model, saved):
    x = torch.randn(4, 1, 8, 8)
    art = lilnetx.read_artifact(saved)
    for t in lilnetx.latent_tensors(model):
        np.testing.assert_array_equal(art.latents[t.name], np.round(t.latent.detach().numpy()))
    for name, group in lilnetx.latent_groups(model).items():
        assert torch.equal(art.decoders[name], group.decoder.detach())
    with torch.no_grad():
        expected_out = model(x)
    expected = _decoded_state(model)
    loaded = lilnetx.load(saved, builder=golden.builder)
    assert not loaded.training and not lilnetx.is_reparameterized(loaded)
    assert list(loaded.state_dict()) == list(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with torch.no_grad():
        assert torch.equal(loaded(x), expected_out)
    assert loaded.pretrained_cfg["input_size"] == [1, 8, 8] and loaded.pretrained_cfg["num_classes"] == 3
    assert loaded.lilnetx_arch == {"name": golden.ARCH, "kwargs": golden.KWARGS}


def test_weights_equal_an_independent_numpy_decode(saved):
    """Oracle outside torch: weight = round(Z) rows @ decoder, from the artifact's raw arrays."""
    art = lilnetx.read_artifact(saved)
    loaded = lilnetx.load(saved, builder=golden.builder).state_dict()
    widths = {g["name"]: g["width"] for g in art.header["groups"]}
    for layer in art.header["layers"]:
        rows = art.latents[layer["name"]].reshape(-1, widths[layer["group"]]).astype(np.float64)
        weights = (rows @ art.decoders[layer["group"]].double().numpy()).reshape(layer["shape"])
        np.testing.assert_allclose(loaded[layer["name"]].numpy(), weights, rtol=1e-6, atol=1e-7)
    for key, value in art.float_params.items():
        assert torch.equal(loaded[key], value), key


def test_reparameterized_load_keeps_integer_latents(model, saved):
    loaded = lilnetx.load(saved, builder=golden.builder, reparameterized=True)
    assert loaded.lilnetx_config["density_filters"] == [2, 2]
    for original, back in zip(lilnetx.latent_tensors(model), lilnetx.latent_tensors(loaded), strict=True):
        assert torch.equal(back.latent.detach(), torch.round(original.latent.detach()))
        assert torch.equal(getattr(back.module, back.tensor_name), getattr(original.module, original.tensor_name))


def test_load_leaves_the_global_rng_alone(saved):
    state = torch.get_rng_state()
    lilnetx.load(saved, builder=golden.builder)
    assert torch.equal(torch.get_rng_state(), state)


def test_same_model_same_bytes(model, tmp_path):
    first = lilnetx.save(model, tmp_path / "a.lnx", metadata={"metrics": {"top1": 0.5}})
    second = lilnetx.save(copy.deepcopy(model), tmp_path / "b.lnx", metadata={"metrics": {"top1": 0.5}})
    assert (tmp_path / "a.lnx").read_bytes() == (tmp_path / "b.lnx").read_bytes()
    assert first.sha256 == second.sha256


def test_lossy_decoder_dtype_is_smaller_and_decodes_consistently(model, saved, tmp_path):
    info = lilnetx.save(model, tmp_path / "half.lnx", decoder_dtype="float16")
    assert info.parts["decoders"] == 2 * sum(g.width**2 for g in lilnetx.latent_groups(model).values())
    assert info.parts["decoders"] < lilnetx.verify(saved).parts["decoders"]
    loaded = lilnetx.load(tmp_path / "half.lnx", builder=golden.builder).state_dict()
    assert lilnetx.read_header(tmp_path / "half.lnx")["groups"][0]["dtype"] == "float16"
    for t in lilnetx.latent_tensors(model):
        rows = torch.round(t.rows().detach()).double()
        weights = (rows @ t.group.decoder.detach().half().double()).reshape(t.latent.shape)
        assert torch.allclose(loaded[t.name].double(), weights, rtol=1e-5, atol=1e-6), t.name


# --------------------------------------------------------------------------- sizes


def test_parts_and_layer_table_account_for_every_byte(model, saved):
    info = lilnetx.verify(saved)
    header = lilnetx.read_header(saved)
    assert sum(info.parts.values()) == info.size_bytes == saved.stat().st_size
    assert set(info.parts) == {"header", "tables", "decoders", "float_params", "coded_latents"}
    itemsize = {"float32": 4, "float16": 2}
    assert info.parts["decoders"] == sum(itemsize[g["dtype"]] * g["width"] ** 2 for g in header["groups"])
    assert {g["name"]: g["dtype"] for g in header["groups"]}["conv5x5"] == "float32"
    assert header["dataset"] == "synthetic" and header["metrics"] == {"top1": 0.75}
    assert header["metadata"] == {"run": "unit"} and header["arch_kwargs"] == golden.KWARGS
    assert {"lilnetx", "torch", "constriction"} <= set(header["versions"])
    assert [layer["name"] for layer in header["layers"]] == [t.name for t in lilnetx.latent_tensors(model)]
    coded = sum(layer["coded_bits"] for layer in header["layers"])
    assert coded <= 8 * info.coded_latent_bytes < coded + 16
    for t in lilnetx.latent_tensors(model):
        layer = _layer(header, t.name)
        rounded = torch.round(t.rows().detach())
        assert layer["zeros"] == int((rounded == 0).sum())
        assert layer["zero_slices"] == int((rounded == 0).all(dim=1).sum())
        assert layer["range"] == [int(rounded.min()), int(rounded.max())]
        with torch.no_grad():
            est = float(t.group.density.total_bits(rounded, resolution=1))
        assert layer["est_bits"] == pytest.approx(est, abs=0.1)


@pytest.mark.parametrize("tables", ["learned", "best"])
def test_coded_latents_stay_within_the_estimate(model, tmp_path, tables):
    """One ANS stream: coded bytes <= estimated bytes x 1.01 + 8, and within a few bytes of the tables' ideal."""
    info = lilnetx.save(model, tmp_path / "m.lnx", tables=tables)
    layers = lilnetx.read_header(tmp_path / "m.lnx")["layers"]
    ideal = sum(layer["ideal_bits"] for layer in layers) / 8
    assert info.coded_latent_bytes <= info.estimated_bits / 8 * 1.01 + 8
    assert info.coded_latent_bytes <= ideal * 1.01 + 8


def test_best_tables_are_never_larger_than_learned_tables(model, tmp_path):
    best = lilnetx.save(model, tmp_path / "best.lnx")
    learned = lilnetx.save(model, tmp_path / "learned.lnx", tables="learned")
    assert best.size_bytes <= learned.size_bytes


# --------------------------------------------------------------------------- writing


def test_save_is_atomic(model, saved, monkeypatch):
    before = saved.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        lilnetx.save(model, saved, metadata={"other": True})
    with pytest.raises(OSError, match="disk full"):
        lilnetx.save(model, saved.with_name("new.lnx"))
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.lnx"]


def test_save_refuses_what_it_cannot_describe(model, tmp_path):
    with pytest.raises(ArtifactError, match="not reparameterised"):
        lilnetx.save(golden.build(), tmp_path / "plain.lnx")
    del model.lilnetx_arch
    with pytest.raises(ArtifactError, match="pass arch="):
        lilnetx.save(model, tmp_path / "x.lnx")
    info = lilnetx.save(model, tmp_path / "x.lnx", arch=golden.ARCH, arch_kwargs=golden.KWARGS)
    assert info.arch == golden.ARCH
    with pytest.raises(ArtifactError, match="JSON"):
        lilnetx.save(model, tmp_path / "y.lnx", arch="a", metadata={"metrics": {"top1": float("nan")}})
    assert not (tmp_path / "y.lnx").exists()


# --------------------------------------------------------------------------- reading errors


def test_wrong_magic(saved):
    saved.write_bytes(b"PK\x03\x04" + saved.read_bytes()[4:])
    with pytest.raises(BadMagicError, match="not a LilNetX .lnx artifact"):
        lilnetx.verify(saved)


def test_newer_format_version(saved):
    data = bytearray(saved.read_bytes())
    data[4] = artifact.FORMAT_VERSION + 1
    saved.write_bytes(bytes(data))
    with pytest.raises(UnsupportedVersionError, match="upgrade lilnetx"):
        lilnetx.read_header(saved)


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(TruncatedArtifactError, match="truncated"):
        lilnetx.load(saved, builder=golden.builder)


def test_flipped_bit(saved):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="fetch it again"):
        lilnetx.read_artifact(saved)


def test_appended_bytes(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(CorruptHeaderError, match="appended"):
        lilnetx.verify(saved)


def test_unknown_architecture(saved, monkeypatch):
    def no_such_model(name, kwargs):
        raise KeyError(f"unknown model {name!r}")

    with pytest.raises(UnknownArchitectureError, match="golden_tiny.*unknown model.*pass builder="):
        lilnetx.load(saved, builder=no_such_model)
    with pytest.raises(UnknownArchitectureError, match="not an nn.Module"):
        lilnetx.load(saved, builder=lambda name, kwargs: "a string")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(UnknownArchitectureError, match="no model builder is installed"):
        lilnetx.load(saved)


def test_default_builder_comes_from_the_entry_point_group(saved, monkeypatch):
    class EntryPoint:
        name, value = "golden", "make_golden:builder"

        def load(self):
            return golden.builder

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [EntryPoint()] if group == artifact.BUILDER_GROUP else [])
    assert isinstance(lilnetx.load(saved), nn.Sequential)


def test_builder_of_another_architecture_is_refused(saved):
    def other(name, kwargs):
        return golden.build(num_classes=5)

    with pytest.raises(CorruptHeaderError, match="number of parameter values"):
        lilnetx.load(saved, builder=other)


def test_meta_device_probe_is_skipped_for_builders_that_need_real_tensors(saved):
    def eager(name, kwargs):
        model = golden.builder(name, kwargs)
        model[0].weight.sum().item()  # fails on the meta device
        return model

    assert isinstance(lilnetx.load(saved, builder=eager), nn.Sequential)


LIES = {
    "same size, other shape": (lambda h: _layer(h, "0.weight").update(shape=[2, 2, 5, 5]), "compressed tensor #0"),
    "more latents": (lambda h: _layer(h, "0.weight").update(shape=[8, 1, 5, 5]), "coded latents"),
    "fewer latents": (lambda h: _layer(h, "10.weight").update(shape=[3, 5]), "coded latents|range"),
    "latent range": (lambda h: _layer(h, "0.weight").update(range=[-100, 100]), "range"),
    "float param shape": (lambda h: h["float_params"][0].update(shape=[5]), "float_params"),
    "float param dtype": (lambda h: h["float_params"][0].update(dtype="float64"), "float_params"),
    "unknown group": (lambda h: _layer(h, "0.weight").update(group="conv9x9"), "group"),
    "group width": (lambda h: h["groups"][0].update(width=16), "width|tables|decoders"),
    "section length": (lambda h: h["sections"].update(tables=h["sections"]["tables"] + 1), "section"),
    "reparam option": (lambda h: h["reparam"].update(density_filters=[10**9]), "density_filters"),
    "structure": (lambda h: h["reparam"].update(structure="diagonal"), "reparameterisation options"),
    "huge tensor": (lambda h: _layer(h, "0.weight").update(shape=[2**20, 2**20, 5, 5]), "limit"),
    "not an object": (lambda h: h.update(layers=[1, 2]), "not an object"),
}


@pytest.mark.parametrize("lie", LIES)
def test_header_that_lies_is_caught(saved, lie):
    edit, message = LIES[lie]
    _resign(saved, edit)
    with pytest.raises(CorruptHeaderError, match=message):
        lilnetx.load(saved, builder=golden.builder)


# --------------------------------------------------------------------------- golden file


@pytest.mark.parametrize("path", sorted(GOLDEN_DIR.glob("tiny_v*.lnx")), ids=lambda p: p.name)
def test_golden_file_decodes_to_its_pinned_weights(path):
    """Every committed format version must keep decoding to exactly the same weights."""
    expected = json.loads(path.with_suffix(".json").read_text())
    info = lilnetx.verify(path)
    assert info.sha256 == expected["file_sha256"] and info.size_bytes == expected["size_bytes"]
    assert golden.weights_sha256(lilnetx.load(path, builder=golden.builder)) == expected["weights_sha256"]


def test_the_current_format_has_a_golden_file():
    assert golden.ARTIFACT.is_file() and golden.EXPECTED.is_file()


def test_golden_model_round_trips(tmp_path):
    """Its dyadic decoders fit float16 exactly, so they are stored in two bytes each, losslessly."""
    model = golden.golden_model()
    lilnetx.save(model, tmp_path / "g.lnx")
    assert {g["dtype"] for g in lilnetx.read_header(tmp_path / "g.lnx")["groups"]} == {"float16"}
    expected = golden.weights_sha256(lilnetx.strip(model))
    assert golden.weights_sha256(lilnetx.load(tmp_path / "g.lnx", builder=golden.builder)) == expected


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch):
    """``lilnetx`` with only the artifact commands (the others import the plugins)."""
    import zoo.cli

    monkeypatch.setattr(zoo.cli, "COMMAND_MODULES", ("zoo.cli.artifact_cmds",))
    return zoo.cli.main


def test_cli_export_a_training_run(cli, model, tmp_path, monkeypatch, capsys):
    from zoo.cli import artifact_cmds

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "lilnetx-checkpoint/1", "epoch": 3, "model": model.state_dict()}, run / "checkpoint.pt")
    recipe = {"arch": golden.ARCH, "arch_kwargs": {}, "dataset": "synthetic", "dataset_kwargs": {},
              "reparam": {"density_filters": [2, 2]}, "train": {"epochs": 3}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "stats.json").write_text(json.dumps({"top1": 0.75, "top5": 1.0, "epochs": 3, "params": 123}))
    rebuilt: list[dict] = []

    def rebuild(recipe: dict) -> nn.Module:
        rebuilt.append(recipe)
        new = lilnetx.reparameterize(golden.build(), **recipe["reparam"])
        new.lilnetx_arch = {"name": golden.ARCH, "kwargs": golden.KWARGS}
        return new

    monkeypatch.setattr(artifact_cmds, "rebuild", rebuild)
    assert cli(["export", str(run), "-o", str(tmp_path / "m.lnx"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["size_bytes"] == (tmp_path / "m.lnx").stat().st_size and rebuilt == [recipe]
    header = lilnetx.read_header(tmp_path / "m.lnx")
    assert header["metrics"] == {"top1": 0.75, "top5": 1.0} and header["recipe"] == recipe
    assert header["dataset"] == "synthetic" and header["metadata"] == {"run": {"epochs": 3}}
    assert cli(["compress", str(run), "-o", str(tmp_path / "c.lnx")]) == 0
    assert (tmp_path / "c.lnx").read_bytes() == (tmp_path / "m.lnx").read_bytes()
    assert cli(["export", str(tmp_path), "-o", str(tmp_path / "x.lnx")]) == 2
    assert "checkpoint.pt is missing" in capsys.readouterr().err


def test_cli_inspect(cli, saved, capsys):
    assert cli(["inspect", str(saved)]) == 0
    text = capsys.readouterr().out
    for needle in ("golden_tiny", "coded_latents", "0.weight", "zero slices %", "dataset synthetic", "top1 0.75"):
        assert needle in text
    assert cli(["inspect", str(saved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(report["parts"].values()) == report["size_bytes"] and report["header"]["arch"] == golden.ARCH


def test_cli_verify(cli, saved, capsys):
    assert cli(["verify", str(saved)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {saved}")
    saved.write_bytes(saved.read_bytes()[:50])
    assert cli(["verify", str(saved)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "truncated" in err
