"""Built-in architectures: one parametrised test over all of them (forward, backward, reparameterise, every
latent gets a gradient), and the paper networks checked against their published shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
from zoo import registry

# One representative per timm family at 32x32 (the full families hold ImageNet-sized models).
# timm's VGG head is a 7x7 conv with 4096 filters (100M weights): a narrow one keeps the test small.
TIMM_SMALL = {"timm/resnet18": {}, "timm/vgg11": {"mlp_ratio": 1 / 64}, "timm/mobilenetv2_050": {},
              "timm/mobilenetv3_small_050": {}}
ARCHITECTURES = [*(a for a in registry.list_architectures() if not a.startswith("timm/")), *TIMM_SMALL]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_trains_reparameterised(arch: str):
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, **TIMM_SMALL.get(arch, {})}
    if arch.startswith("timm/"):
        kwargs["input_size"] = (3, 32, 32)
    model = registry.reparameterized_model(arch, kwargs)
    compute = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    latents = lilnetx.latent_tensors(model)
    assert len([t for t in latents if t.is_weight]) == len(compute)  # every layer is compressed

    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    terms = lilnetx.objective(model, F.cross_entropy(logits, torch.tensor([1, 7])), lilnetx.Lambdas())
    terms["total"].backward()
    for t in latents:
        assert t.latent.grad is not None and t.latent.grad.abs().sum() > 0, t.name
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _resnet_params(blocks: int, width: int, num_classes: int = 10) -> int:
    """Parameters of a CIFAR ResNet from its definition: 3x3 convs without bias, BN (2 per channel), fc."""
    c = [16 * width, 32 * width, 64 * width]
    stem = 3 * 9 * c[0] + 2 * c[0]
    stages = sum(9 * (c[i - 1] if i else c[0]) * c[i] + 2 * c[i]  # first block's first conv
                 + (2 * blocks - 1) * (9 * c[i] * c[i] + 2 * c[i]) for i in range(3))
    return stem + stages + c[2] * num_classes + num_classes


@pytest.mark.parametrize("depth, blocks, published", [(20, 3, 0.27e6), (56, 9, 0.85e6), (110, 18, 1.7e6)])
def test_cifar_resnet_depths(depth: int, blocks: int, published: float):
    model = registry.create_model(f"resnet{depth}")
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [blocks] * 3
    params = sum(p.numel() for p in model.parameters())
    assert params == _resnet_params(blocks, 1)
    assert abs(params - published) / published < 0.03


def test_cifar_resnet_width_and_no_conv_bias():
    model = registry.create_model("resnet20", width=4)
    assert sum(p.numel() for p in model.parameters()) == _resnet_params(3, 4)
    assert model.layer3[0].conv1.out_channels == 256 and model.fc.in_features == 256
    vgg = registry.create_model("vgg16_cifar")
    for net in (model, vgg):
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(m.bias is None for m in convs)  # each is followed by BatchNorm
    assert len([m for m in vgg.modules() if isinstance(m, nn.Conv2d)]) == 13
    assert abs(sum(p.numel() for p in vgg.parameters()) - 15.0e6) / 15.0e6 < 0.01


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    block = registry.create_model("resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4) and not list(block.shortcut.parameters())
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_lenets_match_the_epr_networks():
    lenet300 = registry.create_model("lenet_300_100")
    assert [(m.in_features, m.out_features) for m in lenet300.modules() if isinstance(m, nn.Linear)] == [
        (784, 300), (300, 100), (100, 10)]
    lenet5 = registry.create_model("lenet5_caffe")
    assert [tuple(p.shape) for p in lenet5.parameters()] == [
        (20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]
    assert lenet5(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    small = registry.create_model("lenet_300_100", input_size=(1, 8, 8))
    assert small.fc1.in_features == 64
    with pytest.raises(registry.OptionError, match="architecture 'lenet5_caffe' .*at least 16x16"):
        registry.create_model("lenet5_caffe", input_size=(1, 8, 8))


def test_timm_families_are_listed_with_timm_names_and_config():
    names = registry.list_architectures("timm/*")
    for expected in ("timm/resnet18", "timm/resnet50", "timm/vgg11", "timm/vgg16_bn", "timm/mobilenetv2_100",
                     "timm/mobilenetv3_large_100", "timm/mobilenetv3_small_100"):
        assert expected in names
    assert not [n for n in names if n.startswith(("timm/resnetv2", "timm/resnet50_clip"))]  # other families
    spec = registry.get_architecture("timm/resnet18")
    assert (spec.input_size, spec.num_classes, spec.plugin) == ((3, 224, 224), 1000, "plugins.timm_models")
    model = registry.create_model("timm/resnet18", num_classes=7, in_chans=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model.pretrained_cfg["input_size"] == (1, 224, 224)
