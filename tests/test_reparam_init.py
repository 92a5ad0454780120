"""Scratch initialisation per layer: every layer's latents start near ``latent_bound``, weights of He variance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lilnetx
import zoo
from lilnetx.reparam import ReparamError, _init_fans, latent_tensors, load_latent_state


def _weight_bounds(model: nn.Module) -> dict[str, float]:
    """Largest initial |latent| of every compressed weight."""
    return {t.name: t.latent.abs().max().item() for t in latent_tensors(model) if t.is_weight}


def _fan_out(layer: nn.Module) -> int:
    """He fan-out as timm and torchvision's MobileNets compute it: a grouped conv reaches out_channels / groups."""
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels // layer.groups * layer.weight[0, 0].numel()


def _mobilenet(**options) -> nn.Module:
    torch.manual_seed(0)
    return lilnetx.reparameterize(zoo.create_model("timm/mobilenetv2_050", num_classes=10, in_chans=1), **options)


def test_every_timm_layer_starts_within_twice_the_bound():
    """MobileNetV2's 1x1 convs have fan-outs 8..1280: one shared decoder put the narrowest at +-43."""
    bounds = _weight_bounds(_mobilenet())
    assert max(bounds.values()) <= 2 * 3 * 1.05, max(bounds.items(), key=lambda kv: kv[1])
    # a group of one small layer (the stem's 9x9 decoder) sets its bound from a random decoder's gain: +-15 %
    assert min(bounds.values()) >= 3 * 0.8, min(bounds.items(), key=lambda kv: kv[1])
    groups = lilnetx.latent_groups(_mobilenet())
    assert {"conv1x1", "conv3x3", "dense"} <= set(groups) and len(groups) > 3
    assert all(name.startswith(("conv1x1", "conv3x3", "dense", "bias")) for name in groups)


def test_fan_out_split_none_keeps_one_group_per_kernel_shape():
    model = _mobilenet(fan_out_split=None)
    assert set(lilnetx.latent_groups(model)) == {"conv1x1", "conv3x3", "dense", "bias"}
    bounds = _weight_bounds(model)
    assert max(bounds.values()) / min(bounds.values()) > 10  # the old spread


def test_decoded_weights_keep_he_variance_per_layer():
    """Depthwise convs included: counting all their output channels started them 10-25x below He variance. The
    classifier (the output layer) starts at 1 / fan-in."""
    model = _mobilenet()
    checked = depthwise = 0
    for t in latent_tensors(model):
        weight = getattr(t.module, t.tensor_name).detach()
        if not t.is_weight or weight.numel() < 400:
            continue
        output = t.module is model.get_classifier()
        ratio = weight.var().item() / (1 / t.module.in_features if output else 2 / _fan_out(t.module))
        assert 0.6 < ratio < 1.4, (t.name, ratio)
        checked += 1
        depthwise += getattr(t.module, "groups", 1) > 1
    assert checked >= 20 and depthwise >= 5


@pytest.mark.parametrize("arch, kwargs, overrides, groups", [
    ("lenet5_caffe", {}, {"fc2": "classifier"}, {"conv5x5", "dense", "classifier"}),
    ("lenet_300_100", {}, {"fc3": "classifier"}, {"dense", "classifier"}),
    ("resnet20", {"in_chans": 1}, {}, {"conv3x3", "dense"}),
])
def test_paper_models_keep_their_groups_and_initial_latents(arch, kwargs, overrides, groups):
    """Fan-outs within 4x of each other share a group: the shipped recipes keep the groups they were trained with."""
    models = []
    for split in (4.0, None):
        torch.manual_seed(0)
        model = zoo.create_model(arch, **kwargs)
        models.append(lilnetx.reparameterize(model, group_overrides=overrides, fan_out_split=split))
    assert set(lilnetx.latent_groups(models[0])) - {"bias"} == groups
    for a, b in zip(latent_tensors(models[0]), latent_tensors(models[1]), strict=True):
        assert a.group.name == b.group.name and torch.equal(a.latent, b.latent), a.name


def test_named_groups_are_never_split_and_split_groups_inherit_decoder_forms():
    net = nn.Sequential(*(nn.Conv2d(i, o, 3, bias=False) for i, o in ((1, 64), (64, 4), (4, 64))))
    lilnetx.reparameterize(net, decoder_forms={"conv3x3": "diagonal"})
    groups = lilnetx.latent_groups(net)
    assert [t.group.name for t in latent_tensors(net)] == ["conv3x3", "conv3x3_fo36", "conv3x3"]
    assert all(g.form == "diagonal" for g in groups.values())
    named = nn.Sequential(nn.Conv2d(1, 64, 3), nn.Conv2d(64, 4, 3))
    lilnetx.reparameterize(named, group_overrides={"*": "all3x3"})
    assert set(lilnetx.latent_groups(named)) == {"all3x3", "bias"}


@pytest.mark.parametrize("value", [0.5, -1.0])
def test_bad_fan_out_split_is_a_clear_error(value):
    with pytest.raises(ReparamError, match="fan_out_split"):
        lilnetx.reparameterize(nn.Sequential(nn.Linear(4, 4)), fan_out_split=value)


def _two_widths(name: str, kwargs: dict) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 4, 3, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def test_split_groups_round_trip_through_the_artifact(tmp_path, monkeypatch):
    """The file records each layer's group, so a split model loads back without any new header field, and
    loading skips the initialisation (no search for the output layer)."""
    torch.manual_seed(0)
    model = lilnetx.reparameterize(_two_widths("two", {}), density_filters=(2, 2))
    assert [t.group.name for t in latent_tensors(model)] == ["conv3x3", "conv3x3_fo36", "dense", "bias"]
    with torch.no_grad():
        for group in lilnetx.latent_groups(model).values():
            group.decoder.copy_(group.decoder.half().float())
    lilnetx.save(model.eval(), tmp_path / "m.lnx", arch="two", arch_kwargs={})

    def no_search(model: nn.Module) -> list[nn.Linear]:
        raise AssertionError("loading searched for the output layer")

    monkeypatch.setattr("lilnetx.reparam.output_layers", no_search)
    plain = lilnetx.load(tmp_path / "m.lnx", builder=_two_widths)
    loaded = lilnetx.load(tmp_path / "m.lnx", builder=_two_widths, reparameterized=True)
    assert [t.group.name for t in latent_tensors(loaded)] == [t.group.name for t in latent_tensors(model)]
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(plain(x), model(x))


def test_a_checkpoint_grouped_otherwise_is_refused():
    torch.manual_seed(0)
    model = lilnetx.reparameterize(zoo.create_model("lenet5_caffe", num_classes=10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    load_latent_state(model, state)  # its own grouping loads
    state["conv1.parametrizations.weight.0.group.decoder"] += 1  # conv1 and conv2 share conv5x5 here, not there
    with pytest.raises(ReparamError, match="share a group here but not in the checkpoint"):
        load_latent_state(model, state)


def test_initialize_false_groups_alike_and_leaves_decoders_as_built():
    torch.manual_seed(0)
    drawn = lilnetx.reparameterize(_two_widths("two", {}), density_filters=(2, 2))
    bare = lilnetx.reparameterize(_two_widths("two", {}), density_filters=(2, 2), initialize=False)
    assert all(torch.equal(g.matrix(), torch.eye(g.width)) for g in lilnetx.latent_groups(bare).values())
    assert [t.group.name for t in latent_tensors(bare)] == [t.group.name for t in latent_tensors(drawn)]
    assert bare.lilnetx_config == drawn.lilnetx_config


def test_output_init_he_treats_the_output_layer_like_every_layer():
    """``output_init="he"`` gives the output layer He fan-out variance (the zoo's LeNets were trained so);
    the default starts it at 1 / fan-in."""
    model = zoo.create_model("lenet5_caffe", num_classes=10)
    fc2 = model.fc2
    he = _init_fans(model, [fc2], "he")
    assert he[fc2] == _fan_out(fc2) == 10
    assert _init_fans(model, [fc2])[fc2] == 2 * fc2.in_features
    with pytest.raises(ReparamError, match="unknown output_init 'glorot'"):
        lilnetx.reparameterize(model, output_init="glorot")
    assert lilnetx.reparameterize(model, output_init="he").lilnetx_config["output_init"] == "he"
