"""lilnetx.slim: same outputs as the original on paper and timm architectures with random sparsity masks."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torch import nn

import lilnetx
import zoo
from lilnetx.slim import slim


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _sparsify(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random zero K×K slices, whole filters and whole input channels; non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            w[torch.rand(w.shape[:2], generator=g) < 0.5] = 0
            w[torch.rand(w.shape[0], generator=g) < 0.3] = 0
            if m.groups == 1:
                w[:, torch.rand(w.shape[1], generator=g) < 0.3] = 0
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.5, 0.5, generator=g)
        elif isinstance(m, nn.Linear):
            m.weight[:, torch.rand(m.weight.shape[1], generator=g) < 0.3] = 0
    return model.eval()


def _check_same(model: nn.Module, size: tuple[int, ...]) -> nn.Module:
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimmed = slim(model, example_input=x[:1])
    with torch.no_grad():
        ref, out = model(x), slimmed(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), float((out - ref).abs().max())
    return slimmed


@pytest.mark.parametrize("arch, size, kwargs", [
    ("resnet20", (3, 32, 32), {"width": 0.5}),
    ("lenet5_caffe", (1, 28, 28), {}),
    ("lenet_300_100", (1, 28, 28), {}),
    ("timm/resnet10t", (3, 32, 32), {}),
    ("timm/mobilenetv2_035", (3, 32, 32), {}),
    ("timm/mobilenetv3_small_050", (3, 32, 32), {}),
])
def test_slim_keeps_outputs_and_removes_parameters(arch: str, size: tuple[int, ...], kwargs: dict) -> None:
    torch.manual_seed(0)
    model = _sparsify(zoo.create_model(arch, num_classes=10, input_size=size, **kwargs))
    slimmed = _check_same(model, size)
    assert _params(slimmed) < _params(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) is nn.BatchNorm2d
                   for m in slimmed.modules()) or arch == "lenet_300_100"


def test_vgg16_cifar_loses_its_zero_channels() -> None:
    torch.manual_seed(0)
    model = _sparsify(zoo.create_model("vgg16_cifar", num_classes=10))
    slimmed = _check_same(model, (3, 32, 32))
    convs = [m for m in slimmed.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.out_channels for c in convs) < 4224  # VGG-16's 13 convs hold 4,224 filters
    assert all(c.bias is not None for c in convs)  # BatchNorm folded into every conv


def test_timm_vgg_keeps_its_unknown_head_dense_and_names_it() -> None:
    torch.manual_seed(0)
    model = _sparsify(timm.models.vgg.VGG([16, "M", 32, "M", 32, "M", 32, "M", 32, "M"], num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="ConvMlp"):
        slimmed = slim(model, example_input=x[:1])
    with torch.no_grad():
        assert torch.allclose(slimmed(x), model(x), atol=1e-5)
    assert _params(slimmed) < _params(model)


def test_channel_padding_shortcut_is_named_and_kept() -> None:
    torch.manual_seed(0)
    model = _sparsify(zoo.create_model("resnet20", num_classes=10, width=0.5)).eval()
    with pytest.warns(UserWarning, match=r"kept dense around layer types it does not understand: pad \(\d+ removable"):
        slimmed = slim(model, example_input=torch.zeros(1, 3, 32, 32))
    # the padded residual stream keeps its channels; the blocks' inner spaces are still slimmed
    assert slimmed.conv1.out_channels == model.conv1.out_channels
    assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(slimmed(x), model(x), rtol=1e-4, atol=1e-5)


def test_nothing_to_remove_slims_to_itself() -> None:
    torch.manual_seed(0)
    model = zoo.create_model("lenet5_caffe", num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slimmed = slim(model)  # input size from model.pretrained_cfg
    assert slimmed is not model
    assert {k: v.shape for k, v in slimmed.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in slimmed.state_dict().items())


def test_input_model_is_untouched_and_reparameterized_models_are_stripped(convnet: nn.Module) -> None:
    lilnetx.reparameterize(convnet)
    before = {k: v.clone() for k, v in convnet.state_dict().items()}
    slimmed = slim(convnet, example_input=torch.zeros(1, 1, 8, 8))
    assert not lilnetx.is_reparameterized(slimmed) and lilnetx.is_reparameterized(convnet)
    assert all(torch.equal(v, before[k]) for k, v in convnet.state_dict().items())


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_untraceable_model_is_kept_dense_with_a_warning() -> None:
    model = _Untraceable().eval()
    x = torch.ones(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="cannot be traced"):
        slimmed = slim(model, example_input=x)
    assert torch.equal(slimmed(x), model(x))


def test_sparse_true_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = zoo.create_model("lenet5_caffe", num_classes=10).eval()
    with torch.no_grad():
        model.conv2.weight[torch.rand(50, 20) < 0.9] = 0
    sparse = slim(model, sparse=True)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)
    from lilnetx.kernels import load_extension
    from lilnetx.sparse_conv import SparseConv2d

    if load_extension() is not None:
        assert isinstance(sparse.conv2, SparseConv2d)
