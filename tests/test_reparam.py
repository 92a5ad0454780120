"""Reparameterisation: gradients, exact zeros, an independent decode oracle, any architecture."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

import lilnetx
from lilnetx.reparam import LatentWeight, ReparamError


def _decode_oracle(t: lilnetx.LatentTensor) -> np.ndarray:
    """Weights recomputed outside torch's parametrization: round(Z) rows times the decoder, in numpy."""
    rows = np.round(t.latent.detach().double().numpy()).reshape(-1, t.group.width)
    return (rows @ t.group.matrix().detach().double().numpy()).reshape(t.latent.shape)


def test_groups_follow_kernel_shapes(convnet):
    lilnetx.reparameterize(convnet)
    groups = lilnetx.latent_groups(convnet)
    assert set(groups) == {"conv5x5", "conv3x3", "conv1x1", "dense", "bias"}
    assert groups["conv5x5"].width == 25 and groups["dense"].width == 1
    assert groups["conv3x3"].decoder.shape == (9, 9)
    assert groups["conv5x5"].density.channels == 25 and groups["bias"].density.channels == 1


def test_every_learnable_parameter_gets_a_finite_gradient(convnet):
    lilnetx.reparameterize(convnet)
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    task = nn.functional.cross_entropy(convnet(x), y)
    lilnetx.objective(convnet, task)["total"].backward()
    names = [n for n, _ in convnet.named_parameters()]
    assert any("original" in n for n in names) and any("decoder" in n for n in names)
    assert any("density" in n for n in names) and any(n.startswith("1.") for n in names)  # BN
    for name, p in convnet.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for t in lilnetx.latent_tensors(convnet):
        assert t.latent.grad.abs().sum() > 0, t.name


def test_zero_latent_slice_decodes_to_exact_zero_weights(convnet):
    lilnetx.reparameterize(convnet)
    conv = convnet[0]
    with torch.no_grad():
        conv.parametrizations.weight.original[3, 0] = 0.3  # rounds to zero
        conv.parametrizations.weight.original[5] = 0.0
    assert torch.equal(conv.weight[3, 0], torch.zeros(5, 5))
    assert torch.equal(conv.weight[5], torch.zeros(1, 5, 5))
    assert conv.weight[4].abs().sum() > 0


def test_decoded_weights_match_independent_oracle(convnet):
    lilnetx.reparameterize(convnet)
    for t in lilnetx.latent_tensors(convnet):
        decoded = getattr(t.module, t.tensor_name).detach().double().numpy()
        np.testing.assert_allclose(decoded, _decode_oracle(t), rtol=1e-5, atol=1e-7)


def test_a_step_weight_is_what_the_layer_reads_and_other_parametrizations_still_apply(convnet, monkeypatch):
    """Inside a training step a layer reads the step's decoded weight directly (the shortcut getter, which runs no
    parametrization module); outside it, or with a second parametrization on the tensor, torch's getter decodes
    (and applies the others)."""
    lilnetx.reparameterize(convnet)
    t = lilnetx.latent_tensors(convnet)[0]
    latent_weight = t.module.parametrizations[t.tensor_name][0]
    step_weight = torch.randn(t.latent.shape)
    latent_weight.use_step_weight(step_weight)
    with monkeypatch.context() as patched:
        patched.setattr(LatentWeight, "forward", lambda self, z: pytest.fail("torch's getter ran"))
        assert getattr(t.module, t.tensor_name) is step_weight
    latent_weight.use_step_weight(None)
    np.testing.assert_allclose(getattr(t.module, t.tensor_name).detach().double().numpy(), _decode_oracle(t),
                               rtol=1e-5, atol=1e-7)

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    torch.nn.utils.parametrize.register_parametrization(t.module, t.tensor_name, Double())
    latent_weight.use_step_weight(step_weight)
    torch.testing.assert_close(getattr(t.module, t.tensor_name), 2 * step_weight)


def test_decoded_model_matches_plain_copy_with_decoded_weights(convnet):
    plain = copy.deepcopy(convnet)
    lilnetx.reparameterize(convnet)
    convnet.eval()
    plain.eval()
    state = {k: v for k, v in convnet.state_dict().items() if "parametrizations" not in k}
    for t in lilnetx.latent_tensors(convnet):
        state[t.name] = torch.from_numpy(_decode_oracle(t)).float()
    plain.load_state_dict(state)
    x = torch.randn(4, 1, 12, 12)
    torch.testing.assert_close(convnet(x), plain(x), rtol=1e-4, atol=1e-5)
    stripped = lilnetx.strip(copy.deepcopy(convnet))
    assert not lilnetx.is_reparameterized(stripped)
    assert type(stripped[0]) is nn.Conv2d and isinstance(stripped[0].weight, nn.Parameter)
    torch.testing.assert_close(stripped(x), plain(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(convnet(x), plain(x), rtol=1e-4, atol=1e-5)  # the original still works


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mobilenetv2_100", "mobilenetv3_small_100"])
def test_timm_models_reparameterise_forward_backward(name):
    torch.manual_seed(0)
    kwargs = {"mlp_ratio": 1 / 64} if name.startswith("vgg") else {}  # timm's VGG head is ~100M weights
    model = timm.create_model(name, num_classes=10, **kwargs)
    lilnetx.reparameterize(model)
    groups = lilnetx.latent_groups(model)
    if name == "resnet18":
        assert "conv7x7" in groups  # the 7x7 stem
    if name.startswith("mobilenet"):
        depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert depthwise and all(lilnetx.is_reparameterized(m) for m in depthwise[:1])
    out = model(torch.randn(2, 3, 32, 32))
    lilnetx.objective(model, out.logsumexp(1).mean())["total"].backward()
    for t in lilnetx.latent_tensors(model):
        assert t.latent.grad is not None and torch.isfinite(t.latent.grad).all(), t.name


def test_scratch_init_gives_he_variance_and_a_lecun_output_layer():
    """Hidden layers start at He (fan-out) variance, the output layer at 1 / fan-in (its logits near unit scale)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Conv2d(64, 256, 3), nn.Flatten(), nn.Linear(512, 256),
                          nn.ReLU(), nn.Linear(256, 1024))
    lilnetx.reparameterize(model)
    layers = [layer for layer in model if hasattr(layer, "weight")]
    for layer in layers[:-1]:
        fan_out = layer.weight.shape[0] * math.prod(layer.weight.shape[2:])
        ratio = layer.weight.detach().var().item() / (2 / fan_out)
        assert 0.6 < ratio < 1.6, (layer, ratio)
    ratio = layers[-1].weight.detach().var().item() / (1 / 256)
    assert 0.6 < ratio < 1.6, ratio


class _HeadFirst(nn.Module):
    """A classifier registered before the layers that feed it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 10)
        self.features = nn.Sequential(nn.Linear(784, 256), nn.ReLU())

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.mark.parametrize("build, exclude, output, hidden", [
    (_HeadFirst, (), "fc", "features.0"),
    (lambda: nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10)), ("2",), None, "0"),
])
def test_the_output_layer_is_the_models_not_the_last_compressed(build, exclude, output, hidden):
    """Registration order or an excluded classifier must not give a hidden layer the output layer's variance."""
    torch.manual_seed(0)
    model = lilnetx.reparameterize(build(), exclude=exclude)
    layers = dict(model.named_modules())
    hid = layers[hidden].weight.detach()
    assert 0.6 < hid.var().item() / (2 / hid.shape[0]) < 1.6
    if output:
        out = layers[output].weight.detach()
        assert 0.6 < out.var().item() / (1 / out.shape[1]) < 1.6


def test_fit_init_keeps_trained_weights(convnet):
    before = {n: p.detach().clone() for n, p in convnet.named_parameters() if n.endswith("weight")}
    lilnetx.reparameterize(convnet, init="fit")
    assert convnet.lilnetx_config["fit_error"] < 0.05
    for name, w in before.items():
        module = convnet.get_submodule(name.rsplit(".", 1)[0])
        if lilnetx.is_reparameterized(module):
            rel = (module.weight - w).norm() / w.norm()
            assert rel < 0.05, name


def test_excluded_layers_stay_untouched(convnet):
    head = convnet[12]
    weight = head.weight
    lilnetx.reparameterize(convnet, exclude=["12"])
    assert head.weight is weight and not lilnetx.is_reparameterized(head)
    assert lilnetx.is_reparameterized(convnet[10])


def test_layer_policy_groups_or_skips(convnet):
    def policy(name: str, module: nn.Module):
        if name == "0":
            return False
        return "classifier" if name == "12" else None

    lilnetx.reparameterize(convnet, layer_policy=policy)
    groups = lilnetx.latent_groups(convnet)
    assert "classifier" in groups and "conv5x5" not in groups


def test_group_overrides_give_a_layer_its_own_group(convnet):
    lilnetx.reparameterize(convnet, group_overrides={"12": "classifier"})
    groups = lilnetx.latent_groups(convnet)
    assert "classifier" in groups and "dense" in groups
    assert convnet[12].parametrizations.weight[0].group is groups["classifier"]
    assert convnet.lilnetx_config["group_overrides"] == {"12": "classifier"}


def test_bias_compression_can_be_turned_off(convnet):
    lilnetx.reparameterize(convnet, compress_bias=False)
    assert "bias" not in lilnetx.latent_groups(convnet)
    assert all(t.tensor_name == "weight" for t in lilnetx.latent_tensors(convnet))


@pytest.mark.parametrize("options, message", [
    ({"init": "pretrained"}, "unknown init"),
    ({"structure": "rows"}, "unknown structure"),
    ({"exclude": ["*"]}, "no Conv or Linear layer"),
    ({"colour": 3}, "colour"),
])
def test_bad_options_are_clear_errors(convnet, options, message):
    with pytest.raises((ReparamError, TypeError), match=message):
        lilnetx.reparameterize(convnet, **options)


def test_reparameterising_twice_is_an_error(convnet):
    lilnetx.reparameterize(convnet)
    with pytest.raises(ReparamError, match="already"):
        lilnetx.reparameterize(convnet)


def test_one_group_holds_one_kernel_shape(convnet):
    with pytest.raises(ReparamError, match="one kernel shape"):
        lilnetx.reparameterize(convnet, layer_policy=lambda name, module: "everything")


@pytest.mark.parametrize("form, shape", [("full", (25, 25)), ("diagonal", (1, 25)), ("scalar", (1, 1))])
def test_decoder_forms_store_fewer_values_and_decode_like_their_matrix(convnet, form, shape):
    lilnetx.reparameterize(convnet, decoder_forms={"conv5x5": form})
    group = lilnetx.latent_groups(convnet)["conv5x5"]
    assert group.form == form and tuple(group.decoder.shape) == shape
    assert convnet.lilnetx_config["decoder_forms"] == {"conv5x5": form}
    matrix = group.matrix().detach()
    assert torch.equal(matrix, torch.diag(torch.diagonal(matrix))) or form == "full"
    t = lilnetx.latent_tensors(convnet)[0]
    with torch.no_grad():
        t.latent.normal_(0, 3)
        t.latent[0, 0] = 0.2  # a slice that rounds to zero decodes to zeros in every form
    np.testing.assert_allclose(convnet[0].weight.detach().double().numpy(), _decode_oracle(t), rtol=1e-5, atol=1e-7)
    assert torch.equal(convnet[0].weight[0, 0], torch.zeros(5, 5))
    out = convnet(torch.randn(2, 1, 12, 12))
    lilnetx.objective(convnet, out.logsumexp(1).mean())["total"].backward()
    assert group.decoder.grad is not None and group.decoder.grad.abs().sum() > 0


@pytest.mark.parametrize("form", ["diagonal", "scalar"])
def test_compact_decoder_forms_keep_he_variance_and_fit(form):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Conv2d(64, 256, 3))
    lilnetx.reparameterize(model, decoder_forms={"conv3x3": form})
    for layer in model:
        ratio = layer.weight.detach().var().item() / (2 / (layer.weight.shape[0] * 9))
        assert 0.6 < ratio < 1.6, (layer, ratio)
    trained = nn.Sequential(nn.Conv2d(4, 8, 3))
    weight = trained[0].weight.detach().clone()
    lilnetx.reparameterize(trained, init="fit", decoder_forms={"conv3x3": form})
    assert (trained[0].weight - weight).norm() / weight.norm() < 0.05


@pytest.mark.parametrize("forms, message", [
    ({"conv5x5": "lowrank"}, "unknown decoder form"),
    ({"conv7x7": "diagonal"}, "does not have"),
])
def test_bad_decoder_forms_are_clear_errors(convnet, forms, message):
    with pytest.raises(ReparamError, match=message):
        lilnetx.reparameterize(convnet, decoder_forms=forms)


@pytest.mark.parametrize("bound", [1.0, 3.0])
def test_latent_bound_sets_the_widest_layers_initial_range(bound):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(20, 50, 5), nn.Conv2d(50, 50, 5))
    lilnetx.reparameterize(model, latent_bound=bound)
    widest = model[1].parametrizations.weight.original
    assert widest.abs().max().item() == pytest.approx(bound, rel=0.1)


def test_compact_decoders_round_trip_through_the_artifact(tmp_path):
    """Format 2 stores a diagonal decoder as 1 x width and a scalar one as 1 x 1; loading gives the same weights."""
    from golden import make_golden as golden  # tests/ is on sys.path

    torch.manual_seed(0)
    forms = {"conv5x5": "diagonal", "conv3x3": "scalar"}
    model = lilnetx.reparameterize(golden.build(), density_filters=(2, 2), decoder_forms=forms)
    with torch.no_grad():
        for group in lilnetx.latent_groups(model).values():
            group.decoder.copy_(group.decoder.half().float())
    info = lilnetx.save(model.eval(), tmp_path / "m.lnx", arch=golden.ARCH, arch_kwargs=golden.KWARGS)
    art = lilnetx.read_artifact(tmp_path / "m.lnx")
    assert art.header["format_version"] >= 2 and art.header["reparam"]["decoder_forms"] == forms
    assert tuple(art.decoders["conv5x5"].shape) == (1, 25) and tuple(art.decoders["conv3x3"].shape) == (1, 1)
    assert info.parts["decoders"] == 2 * (25 + 1 + 1 + 1 + 1)  # float16: conv5x5, conv3x3, conv1x1, dense, bias
    loaded = lilnetx.load(tmp_path / "m.lnx", builder=golden.builder)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
