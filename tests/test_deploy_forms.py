"""Deployable forms of a reparameterised model: TorchScript, torch.compile and torch.export (tiny timm nets)."""

from __future__ import annotations

import copy

import pytest
import torch

import lilnetx
from lilnetx.reparam import LatentGroup, LatentWeight, round_ste

timm = pytest.importorskip("timm")
TIMM_TINY = ["resnet10t", "mobilenetv2_035"]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
INPUT = (2, 3, 32, 32)


def test_round_ste_rounds_exactly_with_positive_zeros_and_a_straight_through_gradient():
    z = torch.tensor([-2.5, -1.5, -0.7, -0.5, -0.3, -0.0, 0.0, 0.3, 0.5, 0.7, 1.5, 2.5, 1e6 + 0.5, -3e7])
    z = torch.cat([z, torch.randn(1000) * 20]).requires_grad_(True)
    out = round_ste(z)
    assert torch.equal(out, torch.round(z.detach()))
    assert not torch.signbit(out[out == 0]).any()  # -0.0 never leaks into the weights
    out.backward(torch.arange(len(z), dtype=z.dtype))
    assert torch.equal(z.grad, torch.arange(len(z), dtype=z.dtype))
    scripted = torch.jit.script(round_ste)
    assert torch.equal(scripted(z.detach()), out.detach())


@pytest.mark.parametrize("width", [1, 9])
def test_latent_weight_scripts(width):
    torch.manual_seed(0)
    group = LatentGroup("g", width)
    with torch.no_grad():
        group.decoder.normal_()
    param = LatentWeight(group)
    z = torch.randn(4, 3, *((3, 3) if width == 9 else ()))
    assert torch.equal(torch.jit.script(param)(z), param(z))


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = lilnetx.reparameterize(timm.create_model(name, num_classes=10, pretrained=False))
    return model.eval()


@pytest.mark.parametrize("name", TIMM_TINY)
def test_export_runs_the_reparameterised_timm_model(name):
    model, x = _tiny(name), torch.randn(*INPUT)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TIMM_TINY)
def test_torchscript_of_the_reparameterised_timm_model(name):
    """torch's parametrizations refuse scripting; ``strip`` of a copy gives the same network, which scripts."""
    model, x = _tiny(name), torch.randn(*INPUT)
    with pytest.raises((RuntimeError, torch.jit.Error), match="Parametrization is not working with scripting"):
        torch.jit.script(model)(x)
    scripted = torch.jit.script(lilnetx.strip(copy.deepcopy(model)))
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet10t", pytest.param("mobilenetv2_035", marks=pytest.mark.slow)])
def test_compile_captures_the_reparameterised_timm_model_in_one_graph(name):
    model, x = _tiny(name), torch.randn(*INPUT)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # graph capture, no code generation
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_with_inductor_runs_the_reparameterised_timm_model():
    model, x = _tiny("resnet10t"), torch.randn(*INPUT)
    torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-5)
