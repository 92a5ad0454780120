"""The straight load path: a shipped zoo model decodes to Ψ·round(Z) and imports only what it needs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lilnetx
from plugins import timm_models

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "zoo_artifacts" / "lenet5_caffe.mnist-lam20.lnx"
NOT_NEEDED = ("timm", "torchvision", "sklearn", "sympy")


def test_loading_a_lenet_imports_no_timm_torchvision_or_sklearn():
    """A fresh process rebuilds the shipped LeNet through the installed builder (all plugins loaded)."""
    code = (f"import json, sys, lilnetx; model = lilnetx.load({str(SHIPPED)!r}); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "zoo" in imported and not imported & set(NOT_NEEDED), sorted(imported & set(NOT_NEEDED))


def test_shipped_weights_are_the_decoded_latents():
    """Oracle in numpy, from the artifact's raw arrays: weight = round(Z) rows · Ψ (matrix, or scales)."""
    art = lilnetx.read_artifact(SHIPPED)
    loaded = lilnetx.load(SHIPPED).state_dict()
    widths = {g["name"]: g["width"] for g in art.header["groups"]}
    assert art.header["layers"]
    for layer in art.header["layers"]:
        rows = art.latents[layer["name"]].reshape(-1, widths[layer["group"]]).astype(np.float64)
        psi = art.decoders[layer["group"]].double().numpy()
        weights = (rows @ psi if psi.shape[0] > 1 else rows * psi).reshape(layer["shape"])
        np.testing.assert_allclose(loaded[layer["name"]].numpy(), weights, rtol=1e-6, atol=1e-7)
    for key, value in art.float_params.items():
        assert torch.equal(loaded[key], value), key
    assert set(loaded) == {layer["name"] for layer in art.header["layers"]} | set(art.float_params)


@pytest.mark.skipif(timm_models._timm_version() != json.loads(timm_models.TABLE.read_text())["timm"],
                    reason="timm_archs.json was written for another timm version (rewrite it: "
                           "python -m plugins.timm_models)")
def test_the_stored_timm_table_is_what_timm_says():
    assert json.loads(timm_models.TABLE.read_text()) == timm_models.live_table()


def test_listing_architectures_does_not_import_timm():
    code = ("import sys, zoo; names = zoo.list_architectures('timm/*'); "
            "assert len(names) > 50 and 'timm/resnet18' in names and 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("arch, kwargs", [
    ("lenet5_caffe", {}), ("resnet20", {}), ("timm/resnet18", {"input_size": (3, 32, 32)}),
    ("timm/mobilenetv3_small_050", {"input_size": (3, 32, 32)}), ("timm/test_vit", {}),
])
def test_round_trip_through_the_installed_builders_is_exact(arch: str, kwargs: dict, tmp_path: Path):
    """Paper and timm architectures (residuals, squeeze-excite, attention) decode to the very same outputs."""
    from zoo import registry

    torch.manual_seed(0)
    model = registry.reparameterized_model(arch, {"num_classes": 10, **kwargs}).eval()
    lilnetx.save(model, tmp_path / "m.lnx", float_dtype="float32")  # float parameters as they are: exact
    loaded = lilnetx.load(tmp_path / "m.lnx")
    assert not lilnetx.is_reparameterized(loaded) and loaded.lilnetx_arch == model.lilnetx_arch
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_lilnetx_never_imports_torchvision_or_sklearn():
    """Datasets live in the plugins: no module of the method package imports the image libraries."""
    pattern = re.compile(r"^\s*(import|from)\s+(torchvision|sklearn)\b", re.MULTILINE)
    sources = list((ROOT / "lilnetx").rglob("*.py"))
    assert sources and not [p.name for p in sources if pattern.search(p.read_text())]
