"""The `.lnx` artifact: exact round trip, independent re-decode, honest sizes, atomic writes, every error."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from golden import make_golden as golden  # tests/ is on sys.path; golden/ holds the writer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lilnetx
from lilnetx import artifact
from lilnetx import entropy_coding as ec
from lilnetx.artifact import (
    ArchitectureBuildError,
    ArtifactError,
    ArtifactNotFoundError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptHeaderError,
    TruncatedArtifactError,
    UnsupportedVersionError,
)
from lilnetx.artifact.format import DERIVED_LAYER_FIELDS, ZDICT_V3, snap_decoder
from lilnetx.training import TrainConfig, Trainer
from zoo.datasets import DatasetBundle

GOLDEN_DIR = Path(__file__).parent / "golden"




@pytest.fixture(scope="module")
def trained_model() -> nn.Module:
    """The golden architecture trained briefly on synthetic data: realistic latents, densities and BN stats.
    Decoders stay float32 (``decoder_dtype=None``), so storing them as float16 is lossy."""
    torch.manual_seed(0)
    x = torch.randn(384, 1, 8, 8)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0).long()
    model = lilnetx.reparameterize(golden.build(), density_filters=(2, 2))
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, density_lr=1e-2, lambda_rate=0.3, warmup_epochs=0,
                         decoder_dtype=None, device="cpu")
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
    lilnetx.save(model, path, metadata={"dataset": "synthetic", "metrics": {"top1": 0.75}, "run": "unit"},
                 float_dtype="float32")  # every float parameter as it is: the round trip is bit exact
    return path


def _resign(path: Path, edit) -> None:
    """Rewrite ``path`` with ``edit(header)`` applied and a correct size and checksum (a lying file)."""
    header, sections = artifact.reader.parse(path.read_bytes(), str(path))
    edit(header)
    path.write_bytes(artifact.format.assemble(header, [sections[name] for name in artifact.SECTIONS]))


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
    assert list(loaded.state_dict()) == list(golden.build().state_dict())  # the plain architecture's order
    assert sorted(loaded.state_dict()) == sorted(expected)
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


def test_qint8_decoders_take_a_byte_per_value_and_decode_to_their_snapped_values(model, saved, tmp_path):
    info = lilnetx.save(model, tmp_path / "q.lnx", decoder_dtype="qint8")
    groups = lilnetx.latent_groups(model).values()
    assert info.parts["decoders"] == sum(g.width**2 + 2 * g.width for g in groups)  # values + a scale per row
    loaded = lilnetx.load(tmp_path / "q.lnx", builder=golden.builder).state_dict()
    for t in lilnetx.latent_tensors(model):
        decoder = t.group.decoder.detach()
        snapped = snap_decoder(decoder, "qint8")
        assert 0 < (snapped - decoder).abs().max() <= decoder.abs().amax(dim=1).max() / 254 * 1.01  # half a step
        weights = (torch.round(t.rows().detach()) @ snapped).reshape(t.latent.shape)
        assert torch.allclose(loaded[t.name], weights, rtol=1e-6, atol=1e-7), t.name


@pytest.mark.parametrize("float_dtype", ["float16", "qint8"])
def test_batchnorm_is_stored_as_scale_and_shift(model, tmp_path, float_dtype):
    """Format 4: a BatchNorm is one entry of 2 x C values (a byte each and two float16 scales for qint8), no
    eps in the header; the decoded BatchNorm computes x * scale + shift, the model's outputs to the stored
    precision."""
    lilnetx.save(model, tmp_path / "exact.lnx", float_dtype="float32")
    info = lilnetx.save(model, tmp_path / "bn.lnx", float_dtype=float_dtype)
    entries = lilnetx.read_header(tmp_path / "bn.lnx")["float_params"]
    assert [(e["name"], e["fold"], e["dtype"], e["shape"]) for e in entries] == [
        ("1", "batchnorm", float_dtype, [4]), ("4", "batchnorm", float_dtype, [4])]
    per_channel = {"float16": 4, "qint8": 2}[float_dtype]
    assert info.parts["float_params"] == 2 * (4 * per_channel + (4 if float_dtype == "qint8" else 0))
    assert lilnetx.verify(tmp_path / "exact.lnx").parts["float_params"] == 2 * (4 * 4 * 4 + 8)  # 4 stats + count
    loaded = lilnetx.load(tmp_path / "bn.lnx", builder=golden.builder)
    bn = model[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    x = torch.randn(8, 4, 3, 3)
    with torch.no_grad():
        expected = (x - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]
        assert torch.allclose(loaded[1](x), expected, rtol=0.02 if float_dtype == "qint8" else 2e-3, atol=0.02)
    assert loaded.state_dict()["1.running_mean"].abs().max() == 0
    assert loaded.state_dict()["1.num_batches_tracked"] == 0


def test_batchnorm_after_a_zero_filter_gets_scale_zero(model, tmp_path):
    """A conv filter of zeros feeds its BatchNorm a constant 0 (running variance ~0, so a huge scale): the scale is
    stored as 0 and the rest of the row keeps a fine qint8 step; the outputs stay the model's."""
    conv = lilnetx.latent_tensors(model)[0]
    assert conv.name == "0.weight"
    with torch.no_grad():
        conv.latent[0].zero_()
        model[1].running_var[0] = 1e-12
    lilnetx.save(model, tmp_path / "q.lnx", float_dtype="qint8")
    loaded = lilnetx.load(tmp_path / "q.lnx", builder=golden.builder)
    assert loaded.state_dict()["1.weight"][0] == 0 and loaded.state_dict()["1.weight"][1:].abs().min() > 0
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), rtol=0.05, atol=0.05)


def test_float_params_other_than_batchnorm_are_stored_as_float16(tmp_path):
    model = lilnetx.reparameterize(golden.build(), density_filters=(2, 2), compress_bias=False)
    info = lilnetx.save(model, tmp_path / "b.lnx", arch=golden.ARCH, arch_kwargs=golden.KWARGS)
    bias = next(e for e in lilnetx.read_header(tmp_path / "b.lnx")["float_params"] if e["name"] == "10.bias")
    assert (bias["dtype"], bias["as"]) == ("float16", "float32") and info.parts["float_params"] > 0
    loaded = lilnetx.load(tmp_path / "b.lnx", builder=golden.builder).state_dict()["10.bias"]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, model[10].bias.detach().half().float())


def test_decoders_snapped_to_qint8_in_training_are_stored_as_qint8_losslessly(tmp_path):
    """What ``TrainConfig(decoder_dtype="qint8")`` leaves is exact in qint8: saved without loss, a quarter of float32."""
    torch.manual_seed(0)
    model = lilnetx.reparameterize(golden.build(), density_filters=(2, 2))
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, warmup_epochs=0, decoder_dtype="qint8", device="cpu")
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,)))
    Trainer(model, data, None, config, progress=False).fit()
    for group in lilnetx.latent_groups(model).values():
        assert torch.equal(snap_decoder(group.decoder.detach(), "qint8"), group.decoder.detach())
    lilnetx.save(model, tmp_path / "t.lnx", arch=golden.ARCH, arch_kwargs=golden.KWARGS, float_dtype="float32")
    dtypes = {g["name"]: g["dtype"] for g in lilnetx.read_header(tmp_path / "t.lnx")["groups"]}
    assert dtypes["conv5x5"] == "qint8"  # 25 x 25: 675 bytes against 1,250 as float16
    loaded = lilnetx.load(tmp_path / "t.lnx", builder=golden.builder)
    assert golden.weights_sha256(loaded) == golden.weights_sha256(lilnetx.strip(model))


def test_format_3_header_dictionary_never_changes():
    """Changing ZDICT_V3 would make every format-3 file unreadable: a new dictionary needs a new format."""
    assert hashlib.sha256(ZDICT_V3).hexdigest()[:16] == "d96c47a0460bd6b9"


def test_header_version_must_match_the_file_version(saved, tmp_path):
    header, sections = artifact.reader.parse(saved.read_bytes(), "x")
    path = tmp_path / "v.lnx"
    path.write_bytes(artifact.format.assemble({**header, "format_version": 2},
                                              [sections[name] for name in artifact.SECTIONS]))
    with pytest.raises(CorruptHeaderError, match=f"format_version 2.*file is format {artifact.FORMAT_VERSION}"):
        lilnetx.verify(path)


# --------------------------------------------------------------------------- sizes


def test_parts_and_layer_table_account_for_every_byte(model, saved):
    info = lilnetx.verify(saved)
    stored = lilnetx.read_header(saved)
    assert not any(set(DERIVED_LAYER_FIELDS) & set(layer) for layer in stored["layers"])  # format 3: recomputed
    header = lilnetx.read_artifact(saved).header
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
    layers = lilnetx.read_artifact(tmp_path / "m.lnx").header["layers"]
    ideal = sum(layer["ideal_bits"] for layer in layers) / 8
    assert info.coded_latent_bytes <= info.estimated_bits / 8 * 1.01 + 8
    assert info.coded_latent_bytes <= ideal * 1.01 + 8


def test_learned_pmfs_are_the_density_at_each_integer(model):
    """Oracle: the density's likelihood of each symbol, evaluated one channel at a time."""
    group = lilnetx.latent_groups(model)["conv5x5"]
    lo, hi = np.arange(-3, -3 + group.width), np.arange(-3, -3 + group.width) + np.arange(group.width) % 4
    pmfs = group.density.integer_pmfs(lo, hi)
    for c in range(group.width):
        rows = torch.zeros(hi[c] - lo[c] + 1, group.width)
        rows[:, c] = torch.arange(lo[c], hi[c] + 1)
        with torch.no_grad():
            expected = group.density.likelihood(rows)[:, c].double().numpy()
        np.testing.assert_allclose(pmfs[c], expected, rtol=1e-6)


def test_the_table_chooser_gets_the_density_not_a_quantised_table(model, tmp_path, monkeypatch):
    """The learned density is quantised once, by the table chooser: what it receives is not on a 2**-16 grid."""
    received = []
    choose = ec.choose_table

    def spy(lo, counts, learned, **options):
        received.append(np.asarray(learned, np.float64))
        return choose(lo, counts, learned, **options)

    monkeypatch.setattr(ec, "choose_table", spy)
    lilnetx.save(model, tmp_path / "m.lnx", tables="learned")
    coded = [p for p in received if len(p) > 1]
    assert coded and all(np.any(p * ec.TOTAL % 1 != 0) for p in coded)


def test_best_tables_are_never_larger_than_learned_tables(model, tmp_path):
    best = lilnetx.save(model, tmp_path / "best.lnx")
    learned = lilnetx.save(model, tmp_path / "learned.lnx", tables="learned")
    assert best.size_bytes <= learned.size_bytes


# --------------------------------------------------------------------------- writing


VERSIONED_PLUGIN = """
from torch import nn
from zoo.hookspecs import hookimpl

@hookimpl
def lilnetx_register_architectures(register):
    register("versioned_mlp", lambda num_classes, in_chans, input_size: nn.Sequential(
        nn.Flatten(), nn.Linear(4, num_classes)), input_size=(1, 2, 2), num_classes=2, in_chans=1, mean=(0.0,),
        std=(1.0,))
"""


def test_header_records_the_plugin_and_its_version(tmp_path, monkeypatch):
    """An entry-point plugin's distribution version; a built-in plugin's is lilnetx-zoo's."""
    from zoo import plugins, registry

    info = tmp_path / "lilnetx_versioned-2.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lilnetx-versioned\nVersion: 2.5\n")
    (info / "entry_points.txt").write_text("[lilnetx.plugins]\nversioned = lilnetx_versioned_plugin\n")
    (tmp_path / "lilnetx_versioned_plugin.py").write_text(VERSIONED_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_manager", plugins.make_plugin_manager(builtins=("plugins.paper_models",),
                                                                         autoload=True))
    own = importlib.metadata.version("lilnetx-zoo")
    for arch, plugin, version in (("versioned_mlp", "versioned", "2.5"), ("lenet_300_100", "plugins.paper_models", own)):
        model = registry.reparameterized_model(arch)
        assert (model.pretrained_cfg["plugin"], model.pretrained_cfg["plugin_version"]) == (plugin, version)
        lilnetx.save(model, tmp_path / f"{arch}.lnx")
        versions = lilnetx.read_header(tmp_path / f"{arch}.lnx")["versions"]
        assert (versions["plugin"], versions["plugin_version"]) == (plugin, version)



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


@pytest.mark.parametrize("read", [lilnetx.load, lilnetx.read_artifact, lilnetx.read_header, lilnetx.verify])
def test_a_missing_file_or_a_folder_names_the_path_and_the_fix(read, tmp_path):
    for path, what in ((tmp_path / "nope.lnx", "no such .lnx file"), (tmp_path, "is a folder")):
        with pytest.raises(ArtifactNotFoundError, match=what) as caught:
            read(path)
        assert str(path) in str(caught.value) and isinstance(caught.value, FileNotFoundError)


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

    with pytest.raises(ArchitectureBuildError, match="golden_tiny.*unknown model.*pass builder="):
        lilnetx.load(saved, builder=no_such_model)
    with pytest.raises(ArchitectureBuildError, match="not an nn.Module"):
        lilnetx.load(saved, builder=lambda name, kwargs: "a string")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(ArchitectureBuildError, match="no model builder is installed"):
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

    with pytest.raises(CorruptHeaderError, match=r"shape of '10.bias'.*says \[3\].*has \[5\]"):
        lilnetx.load(saved, builder=other)


def test_meta_device_probe_is_skipped_for_builders_that_need_real_tensors(saved):
    def eager(name, kwargs):
        model = golden.builder(name, kwargs)
        model[0].weight.sum().item()  # fails on the meta device
        return model

    assert isinstance(lilnetx.load(saved, builder=eager), nn.Sequential)


def test_load_builds_the_architecture_once_and_never_reparameterises(saved, monkeypatch):
    calls = []

    def counting(name, kwargs):
        calls.append(torch.empty(0).device.type)  # the device the builder ran under
        return golden.builder(name, kwargs)

    monkeypatch.setattr(artifact.rebuild, "reparameterize", lambda *a, **k: pytest.fail("reparameterised"))
    loaded = lilnetx.load(saved, builder=counting)
    assert calls == ["meta"] and not lilnetx.is_reparameterized(loaded)
    assert all(not t.is_meta for t in loaded.state_dict().values())


class _WithScale(nn.Module):
    """A model holding a tensor its state dict does not cover: it needs its real build-time value."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.net = golden.build(num_classes)
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def test_models_with_non_persistent_buffers_are_built_for_real(model, tmp_path):
    wrapped = _WithScale()
    wrapped.net = model
    lilnetx.save(wrapped, tmp_path / "w.lnx", arch="with_scale", arch_kwargs={"num_classes": 3}, float_dtype="float32")
    loaded = lilnetx.load(tmp_path / "w.lnx", builder=lambda name, kwargs: _WithScale(**kwargs))
    assert torch.equal(loaded.scale, torch.full((1,), 2.0))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), wrapped(x))



LIES = {
    "same size, other shape": (lambda h: _layer(h, "0.weight").update(shape=[2, 2, 5, 5]), "shape of '0.weight'"),
    "more latents": (lambda h: _layer(h, "0.weight").update(shape=[8, 1, 5, 5]), "shape of '0.weight'"),
    "fewer latents": (lambda h: _layer(h, "10.weight").update(shape=[3, 5]), "shape of '10.weight'"),
    "renamed tensor": (lambda h: _layer(h, "0.weight").update(name="0.kernel"), r"tensors.*\['0.kernel'\]"),
    "layer and float param": (lambda h: h["float_params"][0].update(name="0.weight"), "both as a compressed"),
    "latent range": (lambda h: _layer(h, "0.weight").update(range=[-100, 100]), "range"),
    "float param shape": (lambda h: h["float_params"][0].update(shape=[5]), "float_params"),
    "float param dtype": (lambda h: h["float_params"][0].update(dtype="float64"), "float_params"),
    "unknown group": (lambda h: _layer(h, "0.weight").update(group="conv9x9"), "group"),
    "group width": (lambda h: h["groups"][0].update(width=16), "width|tables|decoders"),
    "section length": (lambda h: h["sections"].update(tables=h["sections"]["tables"] + 1), "section"),
    "reparam option": (lambda h: h["reparam"].update(density_filters=[10**9]), "density_filters"),
    "structure": (lambda h: h["reparam"].update(structure="diagonal"), r"\['reparam'\]\['structure'\]"),
    "huge tensor": (lambda h: _layer(h, "0.weight").update(shape=[2**20, 1, 5, 5]), "shape of '0.weight'"),
    "not an object": (lambda h: h.update(layers=[1, 2]), "not an object"),
    "folded batchnorm shape": (lambda h: h["float_params"][0].update(fold="batchnorm", dtype="float16", shape=[2, 2],
                                                                      **{"as": "float32"}), "shape \\[C\\]"),
    "qint8 plain param": (lambda h: h["float_params"][0].update(dtype="qint8"), "qint8"),
}


@pytest.mark.parametrize("lie", LIES)
def test_header_that_lies_is_caught(saved, lie):
    edit, message = LIES[lie]
    _resign(saved, edit)
    with pytest.raises(CorruptHeaderError, match=message):
        lilnetx.load(saved, builder=golden.builder)


def _move_bits(header: dict) -> None:
    _layer(header, "0.weight")["coded_bits"] -= 8
    _layer(header, "3.weight")["coded_bits"] += 8


DECODE_LIES = {  # caught by the decoder alone, without building the architecture
    "more latents": (lambda h: _layer(h, "0.weight").update(shape=[8, 1, 5, 5]), "fewer values were coded"),
    "fewer latents": (lambda h: _layer(h, "10.weight").update(shape=[3, 5]), "share"),
    "coded bits moved": (_move_bits, "share"),
    "coded bits": (lambda h: _layer(h, "0.weight").update(coded_bits=10**6), "share"),
    "latent range": (lambda h: _layer(h, "0.weight").update(range=[-100, 100]), "range"),
}


@pytest.mark.parametrize("lie", DECODE_LIES)
def test_lies_about_the_latents_are_caught_without_a_builder(saved, lie):
    edit, message = DECODE_LIES[lie]
    _resign(saved, edit)
    with pytest.raises(CorruptHeaderError, match=message):
        lilnetx.read_artifact(saved)


@pytest.mark.parametrize("read", [lilnetx.read_artifact, functools.partial(lilnetx.load, builder=golden.builder)],
                         ids=["read_artifact", "load"])
def test_a_huge_claimed_shape_fails_fast_without_allocating_it(tmp_path, read):
    """2**20 x 25 latents (under the parameter limit) claimed for the golden 4 x 25 layer: ``load`` compares the
    architecture's shapes before decoding, ``read_artifact`` stops when the stream runs out; neither
    allocates the ~100 MB the header asks for."""
    path = tmp_path / "huge.lnx"
    path.write_bytes(golden.ARTIFACT.read_bytes())
    _resign(path, lambda h: _layer(h, "0.weight").update(shape=[2**20, 1, 5, 5]))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CorruptHeaderError, match=r"shape of '0.weight'|fewer values were coded"):
            read(path)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 2 and peak < 16 * 2**20


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
    """Its dyadic decoders fit float16 exactly, so they are stored in two bytes each, losslessly; the int8 x
    1/512 one is stored as qint8 (a byte each and a scale per row), also losslessly."""
    model = golden.golden_model()
    lilnetx.save(model, tmp_path / "g.lnx", float_dtype="float32")
    dtypes = {g["name"]: g["dtype"] for g in lilnetx.read_header(tmp_path / "g.lnx")["groups"]}
    assert dtypes.pop(golden.QINT8_GROUP) == "qint8" and set(dtypes.values()) == {"float16"}
    expected = golden.weights_sha256(lilnetx.strip(model))
    assert golden.weights_sha256(lilnetx.load(tmp_path / "g.lnx", builder=golden.builder)) == expected


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch):
    """``lilnetx`` with only the artifact commands (the others import the plugins)."""
    import zoo.cli

    monkeypatch.setattr(zoo.cli, "COMMAND_MODULES", ("zoo.cli.artifact_cmds",))
    return zoo.cli.main


RUN_STATS = {"top1": 0.123, "top5": 0.456, "epochs": 3, "params": 123}  # never what the test set measures


@pytest.fixture
def run(model, tmp_path, monkeypatch) -> tuple[Path, DatasetBundle, list[dict]]:
    """A training-run folder of ``model`` (recipe, stored architecture spec, stats, checkpoint). Export rebuilds
    it through ``zoo.recipe.model_from_spec`` (the golden architecture), the dataset only for a lossy export;
    installed builders rebuild it too. Also returns the dataset and the specs the model was rebuilt from."""
    from zoo import recipe as recipes
    from zoo import registry

    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"format": "lilnetx-checkpoint/1", "epoch": 3, "model": model.state_dict()}, folder / "checkpoint.pt")
    recipe = {"arch": golden.ARCH, "arch_kwargs": {}, "dataset": "synthetic", "dataset_kwargs": {},
              "reparam": {"density_filters": [2, 2]}, "train": {"epochs": 3}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "arch.json").write_text(json.dumps({"name": golden.ARCH, "kwargs": golden.KWARGS}))
    (folder / "stats.json").write_text(json.dumps(RUN_STATS))
    generator = torch.Generator().manual_seed(1)
    test = TensorDataset(torch.randn(200, 1, 8, 8, generator=generator), torch.randint(0, 3, (200,), generator=generator))
    bundle = DatasetBundle(train=test, test=test, num_classes=3, input_size=(1, 8, 8), mean=(0.5,), std=(0.25,),
                           name="synthetic")
    built: list[dict] = []

    def model_from_spec(spec: dict, reparam: dict) -> nn.Module:
        built.append(spec)
        new = lilnetx.reparameterize(golden.build(**spec["kwargs"]), **reparam)
        new.lilnetx_arch = dict(spec)
        return new

    def model_and_data(recipe: dict) -> tuple[nn.Module, DatasetBundle]:  # only runs without arch.json get here
        return model_from_spec({"name": golden.ARCH, "kwargs": golden.KWARGS}, recipe["reparam"]), bundle

    class EntryPoint:
        name, value = "golden", "make_golden:builder"

        def load(self):
            return golden.builder

    monkeypatch.setattr(recipes, "model_from_spec", model_from_spec)
    monkeypatch.setattr(recipes, "model_and_data", model_and_data)
    monkeypatch.setattr(registry, "get_dataset", lambda name, **kwargs: bundle)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [EntryPoint()] if group == artifact.BUILDER_GROUP else [])
    return folder, bundle, built


def test_cli_export_a_training_run(cli, run, tmp_path, capsys, monkeypatch):
    from zoo import registry

    folder, _, built = run
    monkeypatch.setattr(registry, "get_dataset", lambda *a, **k: pytest.fail("export loaded the dataset"))
    # an exact export (float32 BatchNorm) keeps the run's metrics; float16, the default, re-measures
    assert cli(["export", str(folder), "-o", str(tmp_path / "m.lnx"), "--json", "--float-dtype", "float32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert summary["size_bytes"] == (tmp_path / "m.lnx").stat().st_size
    assert built == [{"name": golden.ARCH, "kwargs": golden.KWARGS}]
    header = lilnetx.read_header(tmp_path / "m.lnx")
    assert header["metrics"] == {"top1": 0.123, "top5": 0.456} and header["recipe"] == recipe
    assert header["dataset"] == "synthetic" and header["metadata"] == {"run": {"epochs": 3}}
    assert cli(["compress", str(folder), "-o", str(tmp_path / "c.lnx"), "--float-dtype", "float32"]) == 0
    assert (tmp_path / "c.lnx").read_bytes() == (tmp_path / "m.lnx").read_bytes()
    assert cli(["export", str(tmp_path), "-o", str(tmp_path / "x.lnx")]) == 2
    assert "checkpoint.pt is missing" in capsys.readouterr().err


def test_export_keeps_the_training_curves_in_the_header(cli, run, tmp_path):
    """metrics.jsonl's per-epoch figures travel in the header (metadata.run.history) and reach the model card."""
    from zoo.model_card import training_history

    folder, _, _ = run
    lines = [{"epoch": e, "train_task": 1.0 / e, "train_bits": 9.0, "top1": 0.5 + e / 10, "top5": 1.0,
              "test_loss": 0.123456789, "est_bytes": 1000.0 * e, "conv_slice_sparsity": 0.1 * e,
              "weight_sparsity": 0.2, "lr": 0.01, "seconds": 12.5} for e in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli(["export", str(folder), "-o", str(tmp_path / "h.lnx"), "--float-dtype", "float32"]) == 0
    history = lilnetx.read_header(tmp_path / "h.lnx")["metadata"]["run"]["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3] and history[0]["test_loss"] == 0.1235  # 4 digits
    assert set(history[0]) == {"epoch", "train_task", "test_loss", "top1", "est_bytes", "conv_slice_sparsity",
                               "weight_sparsity", "seconds"}
    assert training_history(lilnetx.read_header(tmp_path / "h.lnx")) == history
    lying = {"metadata": {"run": {"history": [{"epoch": 1, "top1": float("nan")}, "x", {"top1": 0.5},
                                              {"epoch": 2, "top1": True}, {"epoch": 3, "top1": 0.9}]}}}
    assert training_history(lying) == [{"epoch": 3, "top1": 0.9}]  # only rows of finite numbers with an epoch
    assert training_history({"metadata": {"run": {"history": [{"epoch": 1}] * 10_001}}}) == []
    assert cli(["export", str(folder), "-o", str(tmp_path / "n.lnx"), "--float-dtype", "float32", "--no-history"]) == 0
    assert "history" not in lilnetx.read_header(tmp_path / "n.lnx")["metadata"]["run"]


def test_published_header_holds_no_machine_path(cli, run, tmp_path):
    folder, _, _ = run
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["dataset_kwargs"] = {"root": str(tmp_path / "secret" / "data"), "augment": False, "home": "~/data"}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert cli(["export", str(folder), "-o", str(tmp_path / "m.lnx")]) == 0
    header = lilnetx.read_header(tmp_path / "m.lnx")
    assert header["recipe"]["dataset_kwargs"] == {"augment": False}
    assert "secret" not in json.dumps(header)


def test_runs_without_a_stored_spec_export_through_the_dataset(cli, run, tmp_path):
    folder, _, _ = run
    (folder / "arch.json").unlink()
    with pytest.warns(UserWarning, match="no arch.json.*loading dataset 'synthetic'"):
        assert cli(["export", str(folder), "-o", str(tmp_path / "old.lnx")]) == 0
    assert lilnetx.verify(tmp_path / "old.lnx").arch == golden.ARCH
    (folder / "arch.json").write_text(json.dumps({"name": "another_arch", "kwargs": {}}))
    assert cli(["export", str(folder), "-o", str(tmp_path / "bad.lnx")]) == 2


def test_cli_lossy_export_measures_the_decoded_artifact(cli, run, model, tmp_path):
    """float16 rounds the (float32) decoders: the header holds the accuracy of the file's own weights on the
    test split, not the run's. An exact dtype keeps the run's metrics."""
    folder, bundle, _ = run
    assert cli(["export", str(folder), "-o", str(tmp_path / "half.lnx"), "--decoder-dtype", "float16"]) == 0
    header = lilnetx.read_header(tmp_path / "half.lnx")
    assert {g["dtype"] for g in header["groups"]} == {"float16"}
    decoded = lilnetx.load(tmp_path / "half.lnx", builder=golden.builder)
    assert not torch.equal(decoded.state_dict()["0.weight"], _decoded_state(model)["0.weight"])  # really lossy
    measured = lilnetx.evaluate(decoded, DataLoader(bundle.test, batch_size=50))
    assert header["metrics"] == pytest.approx(measured, abs=1e-6)
    assert header["metrics"]["top1"] != RUN_STATS["top1"]
    assert cli(["export", str(folder), "-o", str(tmp_path / "exact.lnx"), "--decoder-dtype", "float64",
                "--float-dtype", "float32"]) == 0
    assert lilnetx.read_header(tmp_path / "exact.lnx")["metrics"] == {"top1": 0.123, "top5": 0.456}


def test_cli_inspect(cli, saved, capsys):
    assert cli(["inspect", str(saved)]) == 0
    text = capsys.readouterr().out
    for needle in ("golden_tiny", "coded_latents", "0.weight", "zero slices", "dataset synthetic", "top1 0.75"):
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
