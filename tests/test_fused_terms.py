"""The fused training pass (one per latent group) against the unfused per-tensor path it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import small_convnet
from torch import nn

import lilnetx
from lilnetx.fused import grid_tables, group_terms
from lilnetx.objective import TrainingTerms, num_slices, rate_bits, structured_norms
from lilnetx.reparam import latent_groups
from lilnetx.training import TrainConfig, Trainer


def _model(structure: str = "slice") -> nn.Module:
    torch.manual_seed(0)
    model = lilnetx.reparameterize(small_convnet(), structure=structure)
    with torch.no_grad():  # some exact zeros, zero rows and -0.0: the subgradients and signs must match too
        for t in lilnetx.latent_tensors(model):
            t.latent.view(-1)[:7] = 0.0
            t.latent.view(-1)[7] = -0.0
    return model


def _weight_probe(weights: list[torch.Tensor]) -> torch.Tensor:
    return sum((w * torch.linspace(-1, 1, w.numel()).view(w.shape)).sum() for w in weights)


def _unfused(model: nn.Module, structure: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    tensors = lilnetx.latent_tensors(model)
    weights = [getattr(t.module, t.tensor_name) for t in tensors]
    bits = rate_bits(tensors, training=True)
    l2 = sum(t.latent.pow(2).sum() for t in tensors)
    lasso = sum(structured_norms(t, structure).sum() for t in tensors if t.is_weight)
    return weights, bits, l2, lasso


@pytest.mark.parametrize("structure", ["slice", "channel"])
def test_fused_terms_decoded_weights_and_gradients_match_the_unfused_path(structure):
    model = _model(structure)
    tensors = lilnetx.latent_tensors(model)
    params = [t.latent for t in tensors] + list(model.parameters())
    params = list({id(p): p for p in params}.values())

    torch.manual_seed(1)
    weights, bits, l2, lasso = _unfused(model, structure)
    loss = 0.3 * bits + 0.7 * l2 + 1.3 * lasso + _weight_probe(weights)
    expected = torch.autograd.grad(loss, params, allow_unused=True)

    torch.manual_seed(1)  # the same noise draws
    with TrainingTerms(tensors, structure=structure) as terms:
        fused_weights = [getattr(t.module, t.tensor_name) for t in tensors]
    for t in tensors:
        assert t.module.parametrizations[t.tensor_name][0].step_weight is None  # cleared on exit
    loss = 0.3 * terms.bits + 0.7 * terms.l2 + 1.3 * terms.lasso + _weight_probe(fused_weights)
    got = torch.autograd.grad(loss, params, allow_unused=True)

    for a, b in zip(weights, fused_weights, strict=True):
        assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))  # bit for bit, +0.0
    for name, a, b in [("bits", bits, terms.bits), ("l2", l2, terms.l2), ("lasso", lasso, terms.lasso)]:
        assert b.item() == pytest.approx(a.item(), rel=1e-5), name
    assert terms.slices == num_slices(tensors)
    checked = 0
    for e, g in zip(expected, got, strict=True):
        assert (e is None) == (g is None)
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())
            checked += 1
    assert checked > len(tensors)  # latents, decoders and density parameters


def test_fused_rate_without_noise_is_the_interpolated_rate_of_the_values():
    model = _model()
    group = next(iter(latent_groups(model).values()))
    rows = lilnetx.latent_tensors(model)[0].rows().detach().requires_grad_(True)
    table, lo = grid_tables([group.density], [rows])[0]
    rounded, bits, _, _ = group_terms(rows, table, lo, noise=False)
    assert torch.equal(rounded, torch.round(rows) + 0.0)
    assert bits.item() == pytest.approx(group.density.total_bits(rows).item(), rel=1e-5)
    assert bits.item() == pytest.approx(group.density.bits(rows).sum().item(), rel=1e-3)  # independent oracle


def test_nan_latents_are_a_clear_error_in_the_fused_pass():
    model = _model()
    with torch.no_grad():
        lilnetx.latent_tensors(model)[0].latent.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        TrainingTerms(lilnetx.latent_tensors(model))


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_trainer_steps_follow_the_unfused_objective():
    """Three optimiser steps with the same seed: fused Trainer.step and the unfused objective stay together."""
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1, 12, 12), torch.zeros(8, dtype=torch.long))
    config = TrainConfig(lr=1e-2, batch_size=8, decoder_dtype=None)
    fused, reference = _model(), _model()
    trainers = [Trainer(m, data, None, config, progress=False) for m in (fused, reference)]
    for x, y in _batches():
        torch.manual_seed(3)
        trainers[0].step(x, y)
        torch.manual_seed(3)
        t = trainers[1]
        task = F.cross_entropy(reference(x), y)
        weights, bits, l2, lasso = _unfused(reference, "slice")
        total = task + config.lambda_rate * bits / num_slices(t.tensors) + config.lambda_l2 * l2 \
            + config.lambda_slice * lasso
        t.opt_model.zero_grad(set_to_none=True)
        t.opt_density.zero_grad(set_to_none=True)
        total.backward()
        t.opt_model.step()
        t.opt_density.step()
        for s in t.schedulers:
            s.step()
    for a, b in zip(fused.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(fused.state_dict().values(), _model().state_dict().values(),
                                                         strict=True))  # it did train


def test_objective_in_training_mode_uses_the_fused_pass_and_keeps_its_terms():
    model = _model()
    torch.manual_seed(2)
    terms = lilnetx.objective(model, torch.tensor(1.0), lilnetx.Lambdas(rate=0.5, l2=0.1, slice=0.2))
    torch.manual_seed(2)
    _, bits, l2, lasso = _unfused(model, "slice")
    slices = num_slices(lilnetx.latent_tensors(model))
    expected = 1.0 + 0.5 * bits / slices + 0.1 * l2 + 0.2 * lasso
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"total", "task", "bits", "l2", "group_lasso"}


@pytest.mark.slow
def test_compiled_pass_matches_eager():
    model = _model()
    tensors = lilnetx.latent_tensors(model)
    params = [t.latent for t in tensors] + [p for g in latent_groups(model).values() for p in g.parameters()]
    results = []
    for compiled in (False, True):
        torch.manual_seed(4)
        with TrainingTerms(tensors, compiled=compiled) as terms:
            weights = [getattr(t.module, t.tensor_name) for t in tensors]
        loss = terms.bits + terms.l2 + terms.lasso + _weight_probe(weights)
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    (loss_e, grads_e), (loss_c, grads_c) = results
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=1e-5)
    for e, c in zip(grads_e, grads_c, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())
