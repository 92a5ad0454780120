"""The rate estimate, the structured priors and the reported statistics against independent computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lilnetx
from lilnetx.density import FactorizedDensity
from lilnetx.objective import num_slices, rate_bits, structured_norms


def test_interpolated_training_rate_matches_direct_evaluation():
    torch.manual_seed(0)
    density = FactorizedDensity(9)
    values = (torch.randn(5000, 9) * 4).requires_grad_(True)
    direct = density.bits(values).sum()
    direct.backward()
    grad_direct = values.grad.clone()
    grad_density = [p.grad.clone() for p in density.parameters()]
    values.grad = None
    density.zero_grad()
    fast = density.total_bits(values)
    fast.backward()
    assert abs(fast.item() - direct.item()) / direct.item() < 1e-4
    torch.testing.assert_close(values.grad, grad_direct, rtol=0.05, atol=2e-3)
    for p, g in zip(density.parameters(), grad_density, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0.02, atol=1e-2 * g.abs().max().item())


def test_density_parameters_are_one_flat_tensor_with_per_view_state_dict_keys():
    density = FactorizedDensity(3, (3, 2))
    assert [name for name, _ in density.named_parameters()] == ["flat"]
    state = density.state_dict()
    assert list(state) == ["matrices.0", "matrices.1", "matrices.2", "biases.0", "biases.1", "biases.2",
                           "factors.0", "factors.1"]
    assert [tuple(v.shape) for v in state.values()] == [(3, 3, 1), (3, 2, 3), (3, 1, 2), (3, 3, 1), (3, 2, 1),
                                                        (3, 1, 1), (3, 3, 1), (3, 2, 1)]
    with torch.no_grad():  # the views are the flat parameter's storage, in state-dict order
        density.flat.copy_(torch.arange(density.flat.numel(), dtype=torch.float32))
    assert torch.equal(torch.cat([v.reshape(-1) for v in density.state_dict().values()]), density.flat.detach())
    other = FactorizedDensity(3, (3, 2))
    other.load_state_dict(density.state_dict())
    assert torch.equal(other.flat, density.flat) and torch.equal(other.network()[1][1], density.network()[1][1])
    with pytest.raises(RuntimeError, match="Missing key.*factors.1"):
        other.load_state_dict({k: v for k, v in state.items() if k != "factors.1"})
    with pytest.raises(RuntimeError, match="Unexpected key.*matrices.3"):
        other.load_state_dict({**state, "matrices.3": state["matrices.0"]})
    with pytest.raises(RuntimeError, match=r"size mismatch for biases.0.*\(3, 3, 1\)"):
        other.load_state_dict({**state, "biases.0": torch.zeros(2)})
    assert torch.equal(other.flat, density.flat)  # a refused load changed nothing it could not place


def test_evaluation_rate_is_exact_at_integers():
    density = FactorizedDensity(4)
    values = torch.randint(-6, 7, (300, 4)).float()
    assert density.total_bits(values, resolution=1).item() == pytest.approx(density.bits(values).sum().item(),
                                                                            rel=1e-6)


def test_structured_norms_by_slice_channel_and_filter(convnet):
    lilnetx.reparameterize(convnet)
    t = lilnetx.latent_tensors(convnet)[0]
    z = t.latent.detach()
    assert torch.allclose(structured_norms(t, "slice"), z.reshape(-1, 25).norm(dim=1))
    assert torch.allclose(structured_norms(t, "filter"), z.reshape(z.shape[0], -1).norm(dim=1))
    assert torch.allclose(structured_norms(t, "channel"), z.transpose(0, 1).reshape(z.shape[1], -1).norm(dim=1))


def test_objective_terms_and_no_nan_with_zero_slices(convnet):
    lilnetx.reparameterize(convnet)
    tensors = lilnetx.latent_tensors(convnet)
    with torch.no_grad():
        tensors[0].latent[0].zero_()
    task = torch.tensor(1.0)
    lambdas = lilnetx.Lambdas(rate=0.5, l2=0.1, slice=0.2)
    terms = lilnetx.objective(convnet, task, lambdas, training=False)
    l2 = sum(t.latent.pow(2).sum() for t in tensors)
    lasso = sum(structured_norms(t, "slice").sum() for t in tensors if t.is_weight)
    bits = rate_bits(tensors, training=False)
    expected = 1.0 + 0.5 * bits / num_slices(tensors) + 0.1 * l2 + 0.2 * lasso
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms = lilnetx.objective(convnet, task, lambdas)
    terms["total"].backward()
    assert all(torch.isfinite(t.latent.grad).all() for t in tensors)


def test_stats_counts_sparsity_on_latents_and_weights_for_convs_and_linears():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    lilnetx.reparameterize(model)
    conv, linear = model[0], model[2]
    with torch.no_grad():
        z = conv.parametrizations.weight.original
        z.uniform_(2, 3)
        z[0, 1] = 0.2  # rounds to a zero slice
        z[1] = 0.0  # a zero filter: 3 slices
        z[:, 0] = 0.0  # a zero input channel: 3 more slices (0,0), (2,0), (3,0)
        linear.parametrizations.weight.original.uniform_(2, 3)
        linear.parametrizations.weight.original[:, :10] = 0.0
    s = lilnetx.stats(model, input_size=(3, 5, 5))
    layer = s["layers"]["0"]
    assert layer["latents"]["zero_slices"] == 7 and layer["weights"]["zero_slices"] == 7
    assert layer["latents"]["zero_filters"] == 1 and layer["latents"]["zero_in_channels"] == 1
    lin = s["layers"]["2"]
    assert lin["weights"]["zero_params"] == 30 and lin["weights"]["zero_in_channels"] == 10
    assert s["conv_slice_sparsity"] == pytest.approx(7 / 12)  # the linear layer's zero weights are no slices
    assert s["weight_sparsity"] == pytest.approx((7 * 9 + 30) / (108 + 300))
    assert s["macs_dense"] == 25 * 4 * 3 * 9 + 300
    assert s["macs_sparse"] == 25 * 5 * 9 + 270
    assert s["macs_saved"] == pytest.approx(1 - s["macs_sparse"] / s["macs_dense"])
    assert s["bits"] > 0 and set(s) >= {"bits", "conv_slice_sparsity", "weight_sparsity", "macs_dense",
                                        "macs_sparse", "macs_saved", "layers"}


def test_weight_sparsity_counts_the_compressed_layers_of_a_decoded_model():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].weight.fill_(1.0)
    assert lilnetx.stats(model, (4,))["weight_sparsity"] == pytest.approx(16 / 24)  # a plain model: every layer
    s = lilnetx.stats(model, (4,), compressed={"0.weight"})
    assert s["weight_sparsity"] == 1.0 and s["conv_slice_sparsity"] is None


def test_channel_structure_counts_conv_groups_like_stats():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.Conv2d(8, 4, 3, groups=2, bias=False))
    lilnetx.reparameterize(model, structure="channel")
    depthwise, grouped = lilnetx.latent_tensors(model)
    assert structured_norms(depthwise, "channel").shape == (8,)
    z = grouped.latent.detach()
    norms = structured_norms(grouped, "channel")
    assert norms.shape == (8,)  # 2 groups x 4 input channels each
    assert torch.allclose(norms[5], z[2:, 1].norm())  # group 1, its input channel 1: filters 2 and 3


def test_nan_latents_are_a_clear_error(convnet):
    lilnetx.reparameterize(convnet)
    with torch.no_grad():
        lilnetx.latent_tensors(convnet)[0].latent[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        lilnetx.rate_bits(lilnetx.latent_tensors(convnet), training=True)


def test_macs_of_a_linear_layer_count_every_token():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    s = lilnetx.stats(model, input_size=(49, 8))  # 49 tokens of 8 features
    assert s["macs_dense"] == 49 * (8 * 16 + 16 * 4)


def test_stats_of_a_plain_model_has_no_bits():
    s = lilnetx.stats(nn.Sequential(nn.Linear(4, 2)), input_size=(4,))
    assert s["bits"] is None and s["macs_dense"] == 8 and s["weight_sparsity"] == 0
