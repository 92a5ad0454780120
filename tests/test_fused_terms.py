"""The fused training pass (one per latent group) against the unfused per-tensor path it replaced, and its C++
kernel against the eager PyTorch pass."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import small_convnet
from torch import nn

import lilnetx
from lilnetx import fused
from lilnetx.density import FactorizedDensity
from lilnetx.fused import grid_tables, group_terms
from lilnetx.native import NativeKernelError
from lilnetx.objective import (
    LayoutError,
    TermsLayout,
    TrainingTerms,
    num_slices,
    rate_bits,
    structured_norms,
    tensors_by_group,
)
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
    with TrainingTerms(tensors, structure=structure, native=False) as terms:
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


def test_trainer_steps_follow_the_unfused_objective(monkeypatch):
    """Three optimiser steps with the same seed: fused Trainer.step (eager path) and the unfused objective stay
    together."""
    monkeypatch.setenv(fused.ENV_SWITCH, "eager")
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1, 12, 12), torch.zeros(8, dtype=torch.long))
    config = TrainConfig(lr=1e-2, batch_size=8, decoder_dtype=None)
    kernel_model, reference = _model(), _model()
    trainers = [Trainer(m, data, None, config, progress=False) for m in (kernel_model, reference)]
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
    for a, b in zip(kernel_model.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(kernel_model.state_dict().values(), _model().state_dict().values(),
                                                         strict=True))  # it did train


def test_objective_in_training_mode_uses_the_fused_pass_and_keeps_its_terms(monkeypatch):
    monkeypatch.setenv(fused.ENV_SWITCH, "eager")
    model = _model()
    torch.manual_seed(2)
    terms = lilnetx.objective(model, torch.tensor(1.0), lilnetx.Lambdas(rate=0.5, l2=0.1, slice=0.2))
    torch.manual_seed(2)
    _, bits, l2, lasso = _unfused(model, "slice")
    slices = num_slices(lilnetx.latent_tensors(model))
    expected = 1.0 + 0.5 * bits / slices + 0.1 * l2 + 0.2 * lasso
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"total", "task", "bits", "l2", "slice_prior"}


@pytest.mark.slow
def test_compiled_pass_matches_eager():
    model = _model()
    tensors = lilnetx.latent_tensors(model)
    params = [t.latent for t in tensors] + [p for g in latent_groups(model).values() for p in g.parameters()]
    results = []
    for compiled in (False, True):
        torch.manual_seed(4)
        with TrainingTerms(tensors, compiled=compiled, native=False) as terms:
            weights = [getattr(t.module, t.tensor_name) for t in tensors]
        loss = terms.bits + terms.l2 + terms.lasso + _weight_probe(weights)
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    (loss_e, grads_e), (loss_c, grads_c) = results
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=1e-5)
    for e, c in zip(grads_e, grads_c, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


# ---- The C++ kernel (lilnetx/csrc/fused_terms.cpp) against the eager pass and the unfused path. ----

def _ext():
    ext = fused.load_extension()
    if ext is None:
        pytest.skip("no C++ compiler: the fused pass runs in eager PyTorch")
    return ext


def _splitmix_draw(seed: int, i: int) -> float:
    """The documented generator, in Python: SplitMix64's i-th output, top 24 bits."""
    m = 2**64
    z = (seed + (i + 1) * 0x9E3779B97F4A7C15) % m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return ((z ^ (z >> 31)) >> 40) / 2**24


def test_kernel_noise_is_uniform_reproducible_and_documented():
    ext = _ext()
    draws = ext.uniform_draws(12345, 200_000)
    assert draws.min() >= 0 and draws.max() < 1  # noise u - 1/2 in [-1/2, 1/2)
    assert abs(draws.mean().item() - 0.5) < 3e-3 and abs(draws.var().item() - 1 / 12) < 2e-3
    assert torch.histc(draws, bins=10, min=0, max=1).sub(20_000).abs().max() < 600  # flat
    assert [draws[i].item() for i in (0, 1, 2, 99_999)] == [_splitmix_draw(12345, i) for i in (0, 1, 2, 99_999)]
    assert not torch.equal(ext.uniform_draws(12346, 100), draws[:100])
    torch.manual_seed(7)
    first = fused.step_seed()
    torch.manual_seed(7)
    assert fused.step_seed() == first != fused.step_seed()  # from torch's generator: manual_seed repeats it


def _members(width: int, sizes=(40, 700, 8)) -> list[torch.Tensor]:
    torch.manual_seed(width)
    members = [torch.randn(n, width) * 3 for n in sizes]
    for m in members:  # exact zeros, a zero row, -0.0 and a tie (round half to even)
        m.view(-1)[:5] = 0.0
        m.view(-1)[5] = -0.0
        m.view(-1)[6] = 2.5
        m[1] = 0.0
    return [m.requires_grad_(True) for m in members]


@pytest.mark.parametrize("width, decoder_shape", [(1, (1, 1)), (1, None), (9, None), (9, (1, 9)), (25, (1, 1)),
                                                  (3, (3, 3)), (9, (9, 9)), (25, (25, 25))])
@pytest.mark.parametrize("noise", [True, False])
def test_kernel_matches_the_eager_pass_with_the_same_draws(width, decoder_shape, noise):
    _ext()
    members = _members(width)
    rows = torch.cat(members)
    density = FactorizedDensity(width)
    (table, lo), = grid_tables([density], [rows])
    table = table.detach().requires_grad_(True)
    decoder = torch.randn(decoder_shape).requires_grad_(True) if decoder_shape else None
    torch.manual_seed(5)
    draws = torch.rand_like(rows)
    torch.manual_seed(5)  # the eager pass draws the same values with torch.rand_like
    rounded, bits, l2, lasso = group_terms(rows, table, lo, noise=noise)
    full = decoder is not None and decoder.shape == (width, width) and width > 1
    expected_out = rounded @ decoder if full else rounded * decoder if decoder is not None else rounded
    outputs, n_bits, n_l2, n_lasso, bounds = fused.native_group_terms(members, width, table, lo, decoder=decoder,
                                                                      noise=noise, draws=draws)
    assert bounds == (rows.min().item(), rows.max().item())
    got_out = torch.cat([o.reshape(-1, width) for o in outputs]) if decoder is not None else outputs[0]
    if full:  # the kernel sums the products per block of rows, the eager decode in its own order: may round differently
        torch.testing.assert_close(got_out, expected_out, rtol=1e-6, atol=1e-6 * expected_out.abs().max().item())
    else:
        assert torch.equal(got_out, expected_out) and torch.equal(got_out.signbit(), expected_out.signbit())
    for a, b in [(bits, n_bits), (l2, n_l2), (lasso, n_lasso)]:
        assert b.item() == pytest.approx(a.item(), rel=1e-5)
    probe = torch.linspace(-1, 1, got_out.numel()).view(got_out.shape)
    inputs = [table, *members] + ([decoder] if decoder is not None else [])
    expected = torch.autograd.grad(0.3 * bits + 0.7 * l2 + 1.3 * lasso + (expected_out * probe).sum(), inputs)
    got = torch.autograd.grad(0.3 * n_bits + 0.7 * n_l2 + 1.3 * n_lasso + (got_out * probe).sum(), inputs)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


@pytest.mark.parametrize("width", [9, 25])
def test_kernel_full_decoder_is_the_same_on_one_thread_and_two(width):
    """A full decoder's products run per block of rows on each thread: the decoded weights do not depend on the
    split, and the decoder's gradient (summed per thread) only to float rounding."""
    _ext()
    members = _members(width, sizes=(4000, 30, 2500))  # several blocks and both threads' ranges
    rows = torch.cat(members)
    (table, lo), = grid_tables([FactorizedDensity(width)], [rows])
    decoder = torch.randn(width, width).requires_grad_(True)
    draws = torch.rand_like(rows)
    probe = torch.linspace(-1, 1, rows.numel())
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outputs, bits, *_ = fused.native_group_terms(members, width, table, lo, decoder=decoder, draws=draws)
            decoded = torch.cat([o.reshape(-1) for o in outputs])
            results.append((decoded.detach(), *torch.autograd.grad((decoded * probe).sum() + bits, [decoder, *members])))
    finally:
        torch.set_num_threads(threads)
    (one, *grads_one), (two, *grads_two) = results
    assert torch.equal(one, two)
    for a, b in zip(grads_one, grads_two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * a.abs().max().item())


@pytest.mark.parametrize("decoder_shape", [(9, 9), (1, 9)])
def test_kernel_members_whose_outputs_are_unused_get_only_the_terms_gradient(decoder_shape):
    """A member whose decoded weight takes no part in the loss (its output gradient is undefined) gets the rate,
    L2 and lasso gradient only, and adds nothing to the decoder's gradient; as the eager pass."""
    _ext()
    members = _members(9)
    rows = torch.cat(members)
    (table, lo), = grid_tables([FactorizedDensity(9)], [rows])
    decoder = torch.randn(decoder_shape).requires_grad_(True)
    torch.manual_seed(5)
    draws = torch.rand_like(rows)
    outputs, bits, l2, lasso, _ = fused.native_group_terms(members, 9, table, lo, decoder=decoder, draws=draws)
    first = members[0].shape[0]
    probe = torch.linspace(-1, 1, outputs[0].numel()).view(outputs[0].shape)
    got = torch.autograd.grad(bits + l2 + lasso + (outputs[0] * probe).sum(), [decoder, *members])
    torch.manual_seed(5)  # the eager pass draws the same values with torch.rand_like
    rounded, e_bits, e_l2, e_lasso = group_terms(rows, table, lo)
    decoded = rounded @ decoder if decoder_shape == (9, 9) else rounded * decoder
    expected = torch.autograd.grad(e_bits + e_l2 + e_lasso + (decoded[:first] * probe).sum(), [decoder, *members])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


def test_kernel_draws_its_own_noise_from_the_step_seed(monkeypatch):
    ext = _ext()
    members = _members(1)
    rows = torch.cat(members)
    (table, lo), = grid_tables([FactorizedDensity(1)], [rows])
    monkeypatch.setattr(fused, "step_seed", lambda: 99)
    own = fused.native_group_terms(members, 1, table, lo)
    given = fused.native_group_terms(members, 1, table, lo, draws=ext.uniform_draws(99, rows.numel()))
    assert own[1].item() == given[1].item()
    torch.manual_seed(5)
    torch.manual_seed(5)
    assert own[1].item() != fused.native_group_terms(members, 1, table, lo, noise=False)[1].item()


@pytest.mark.parametrize("channels, lo, hi", [(1, -5, 6), (9, -40, 2)])
def test_kernel_grid_matches_the_density_in_float64(channels, lo, hi):
    _ext()
    torch.manual_seed(0)
    density = FactorizedDensity(channels)
    with torch.no_grad():
        for p in density.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    reference = FactorizedDensity(channels).double()
    reference.load_state_dict(density.state_dict())
    got, expected = fused.native_bits_grid(density, lo, hi, 32), reference.bits_grid(lo, hi, 32)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
    probe = torch.randn(got.shape, dtype=torch.float64)
    g_got = torch.autograd.grad((got * probe.float()).sum(), list(density.parameters()))
    g_exp = torch.autograd.grad((expected * probe).sum(), list(reference.parameters()))
    for g, e in zip(g_got, g_exp, strict=True):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6 * e.abs().max().item())


def test_kernel_grids_of_several_densities_in_one_call_equal_each_alone():
    ext = _ext()
    torch.manual_seed(1)
    densities = [FactorizedDensity(9), FactorizedDensity(1, (2,)), FactorizedDensity(3, (4, 1, 5, 2))]
    ranges = [(-3, 4), (-20, 1), (0, 2)]
    with torch.no_grad():
        for density in densities:
            for p in density.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    flats = [d.flat.detach() for d in densities]
    filters = [d.filters for d in densities]
    together = ext.grids_forward(flats, filters, [lo for lo, _ in ranges], [hi for _, hi in ranges], 32)
    grads = [torch.randn_like(together[3 * i]) for i in range(len(densities))]
    g_together = ext.grids_backward(flats, filters, [lo for lo, _ in ranges], [hi for _, hi in ranges], 32,
                                    together[1::3], together[2::3], grads, 0.5)
    g_alone = []
    for i, (flat, f, (lo, hi)) in enumerate(zip(flats, filters, ranges, strict=True)):
        alone = ext.grids_forward([flat], [f], [lo], [hi], 32)
        assert torch.equal(alone[0], together[3 * i]) and torch.equal(alone[2], together[3 * i + 2])  # bits, derivatives
        g_alone += ext.grids_backward([flat], [f], [lo], [hi], 32, alone[1:2], alone[2:3], [grads[i] * 0.5], 1.0)
    assert [g.shape for g in g_together] == [g.shape for g in g_alone] == [f.shape for f in flats]
    for a, b in zip(g_alone, g_together, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def _kernel_noise_for_unfused(monkeypatch, tensors) -> None:
    """``torch.rand_like`` (the unfused path's noise, one call per tensor) returns the kernel's draws: per group
    a stream seeded from torch's generator when its first member asks, split over the members in order."""
    sizes = [[t.latent.numel() for t in m] for m in tensors_by_group(tensors).values()]
    state = {"group": 0, "queue": []}

    def rand_like(x, *args, **kwargs):
        if not state["queue"]:
            group = sizes[state["group"] % len(sizes)]
            state["group"] += 1
            state["queue"] = list(fused.load_extension().uniform_draws(fused.step_seed(), sum(group)).split(group))
        draws = state["queue"].pop(0)
        assert draws.numel() == x.numel()
        return draws.view(x.shape).to(x.dtype)
    monkeypatch.setattr(torch, "rand_like", rand_like)


def _unfused_with_kernel_draws(monkeypatch, model: nn.Module, structure: str, dtype: torch.dtype):
    model = copy.deepcopy(model).to(dtype)
    tensors = lilnetx.latent_tensors(model)
    _kernel_noise_for_unfused(monkeypatch, tensors)
    torch.manual_seed(1)
    weights, bits, l2, lasso = _unfused(model, structure)
    probe = sum((w * torch.linspace(-1, 1, w.numel(), dtype=dtype).view(w.shape)).sum() for w in weights)
    params = _latents_decoders_densities(model)
    grads = torch.autograd.grad(0.3 * bits + 0.7 * l2 + 1.3 * lasso + probe, params)
    monkeypatch.undo()
    return weights, (bits, l2, lasso), grads


def _latents_decoders_densities(model: nn.Module) -> list[torch.Tensor]:
    tensors = lilnetx.latent_tensors(model)
    groups = latent_groups(model).values()
    return [t.latent for t in tensors] + [g.decoder for g in groups] + [p for g in groups for p in g.density.parameters()]


@pytest.mark.parametrize("structure", ["slice", "channel"])
def test_kernel_pass_matches_the_unfused_path(monkeypatch, structure):
    """TrainingTerms on the C++ kernel against the per-tensor unfused path fed the kernel's own draws, in float32
    and float64: weights bit for bit, terms to 1e-5, and every gradient at least as close to the float64
    evaluation as the float32 unfused path is (up to 1e-5 of the tensor's largest gradient). The kernel's
    grids are float64 inside: there its gradients are ~10x closer to float64 than float32 PyTorch. Weights of
    full (width x width) decoders come from the kernel's block products, the unfused path's from one per tensor:
    equal to float rounding."""
    _ext()
    model = _model(structure)
    tensors = lilnetx.latent_tensors(model)
    torch.manual_seed(1)
    with TrainingTerms(tensors, structure=structure, native=True) as terms:
        weights = [getattr(t.module, t.tensor_name) for t in tensors]
    loss = 0.3 * terms.bits + 0.7 * terms.l2 + 1.3 * terms.lasso + _weight_probe(weights)
    got = torch.autograd.grad(loss, _latents_decoders_densities(model))
    ref_weights, ref_terms, ref32 = _unfused_with_kernel_draws(monkeypatch, model, structure, torch.float32)
    _, terms64, ref64 = _unfused_with_kernel_draws(monkeypatch, model, structure, torch.float64)
    full = [t.group.width > 1 and t.group.form == "full" for t in tensors]
    assert any(full) and not all(full)
    for a, b, is_full in zip(ref_weights, weights, full, strict=True):
        if is_full:
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6 * a.abs().max().item())
        else:
            assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))
    for name, a, b, c in zip(("bits", "l2", "lasso"), ref_terms, terms64,
                             (terms.bits, terms.l2, terms.lasso), strict=True):
        assert c.item() == pytest.approx(a.item(), rel=1e-5) and c.item() == pytest.approx(b.item(), rel=1e-5), name
    assert len(got) == len(ref32) > len(tensors)
    for g, e32, e64 in zip(got, ref32, ref64, strict=True):
        scale = e64.abs().max().item()
        kernel_error = (g.double() - e64).abs().max().item()
        assert kernel_error <= (e32.double() - e64).abs().max().item() + 1e-5 * scale


def test_kernel_step_skips_what_needs_no_gradient():
    """The step's single autograd node gives frozen densities no gradient (and skips their grids' backward) while
    the latents' gradients stay those of the unfrozen step; a float64 density sends the step to the eager pass."""
    _ext()
    model = _model()
    tensors = lilnetx.latent_tensors(model)
    latents = [t.latent for t in tensors]

    def latent_grads() -> list[torch.Tensor]:
        torch.manual_seed(3)
        with TrainingTerms(tensors, native=True) as terms:
            weights = [getattr(t.module, t.tensor_name) for t in tensors]
        return list(torch.autograd.grad(terms.bits + terms.l2 + _weight_probe(weights), latents))

    expected = latent_grads()
    groups = list(latent_groups(model).values())
    densities = [p for g in groups for p in g.density.parameters()]
    torch.manual_seed(3)
    with TrainingTerms(tensors, native=True) as terms:
        pass
    all_density_grads = torch.autograd.grad(terms.bits, densities)
    frozen = [p for g in groups[::2] for p in g.density.parameters()]  # every other group: a mix
    for p in frozen:
        p.requires_grad_(False)
    for a, b in zip(latent_grads(), expected, strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    with TrainingTerms(tensors, native=True) as terms:
        pass
    trained = [p for p in densities if p.requires_grad]
    got = dict(zip(map(id, trained), torch.autograd.grad(terms.bits, trained), strict=True))
    assert trained and len(trained) < len(densities)
    for p, g in zip(densities, all_density_grads, strict=True):
        if p.requires_grad:  # the unfrozen groups' density gradients land in their own places, unchanged
            assert torch.equal(got[id(p)], g)
    group = next(iter(latent_groups(model).values()))
    group.density.double()
    assert not fused.native_usable([*latents, group.density.flat])


def test_kernel_step_frees_what_its_backward_needed():
    """The step's node keeps its slopes and grids only until its backward (outputs that live on, as a training loop's
    returned terms do, do not keep them), and a second derivative through it is a clear error."""
    _ext()
    model = _model()
    tensors = lilnetx.latent_tensors(model)
    terms = TrainingTerms(tensors, native=True)
    node = terms.bits.grad_fn
    assert any(t.dtype == torch.float64 for t in node.saved_tensors)  # the grids' activations: saved tensors
    torch.autograd.grad(terms.bits + terms.l2, [t.latent for t in tensors])
    with pytest.raises(RuntimeError, match="freed"):
        _ = node.saved_tensors
    terms = TrainingTerms(tensors, native=True)
    grads = torch.autograd.grad(terms.bits, [t.latent for t in tensors], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(sum(g.sum() for g in grads), [t.latent for t in tensors])


def test_eager_switch_and_fallback_without_a_compiler(monkeypatch):
    latents = [torch.zeros(3, 9)]
    monkeypatch.setenv(fused.ENV_SWITCH, "eager")
    assert not fused.native_usable(latents)
    monkeypatch.delenv(fused.ENV_SWITCH)
    assert fused.native_usable(latents) == (fused.load_extension() is not None)
    assert not fused.native_usable([*latents, torch.zeros(3, 9, dtype=torch.float64)])
    assert not fused.native_usable([*latents, torch.zeros(3, 9, device="meta")])  # not on the CPU
    assert not fused.native_usable([torch.zeros(9, 3).t()])  # not contiguous
    monkeypatch.setattr(fused, "load_extension", lambda: None)
    assert not fused.native_usable(latents)
    model = _model()
    torch.manual_seed(1)
    terms = TrainingTerms(lilnetx.latent_tensors(model))  # the eager pass: torch.rand_like's draws
    torch.manual_seed(1)
    _, bits, _, _ = _unfused(model, "slice")
    assert terms.bits.item() == pytest.approx(bits.item(), rel=1e-5)
    with pytest.raises(NativeKernelError, match="native=False"):
        TrainingTerms(lilnetx.latent_tensors(model), native=True)


def test_infinite_latents_are_a_clear_error_in_the_kernel_pass():
    _ext()
    model = _model()
    with torch.no_grad():
        lilnetx.latent_tensors(model)[-1].latent.view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match="diverged"):
        TrainingTerms(lilnetx.latent_tensors(model), native=True)


def _terms_and_gradients(source, model: nn.Module, seed: int) -> tuple[list[float], list[torch.Tensor]]:
    """Terms and gradients of one pass from ``seed``, and the generator's next draw (how much noise it took)."""
    torch.manual_seed(seed)
    terms = TrainingTerms(source, native=True)
    next_draw = torch.rand(()).item()
    loss = 0.3 * terms.bits + 0.7 * terms.l2 + 1.3 * terms.lasso
    params = _latents_decoders_densities(model)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [terms.bits.item(), terms.l2.item(), terms.lasso.item(), next_draw], [
        torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


@pytest.mark.parametrize("shift", [0.25, 3.0])
def test_layout_reuses_last_steps_table_range_with_the_same_terms(monkeypatch, shift):
    """A TermsLayout keeps each group's table range from its last step: latents that moved inside it (0.25)
    and latents that left it (3.0: the pass is rerun on their own range, with the same noise) give the terms and
    gradients of a fresh pass of the same seed."""
    _ext()
    model = _model()
    layout = TermsLayout(lilnetx.latent_tensors(model))
    _terms_and_gradients(layout, model, seed=1)
    assert all(plan.table_range is not None for plan in layout.plans)
    range_passes = []
    own_ranges = fused.native_grid_ranges
    monkeypatch.setattr(fused, "native_grid_ranges", lambda groups: range_passes.append(len(groups)) or
                        own_ranges(groups))
    with torch.no_grad():
        for t in layout.tensors:
            t.latent.add_(shift)
    reused, reused_grads = _terms_and_gradients(layout, model, seed=2)
    assert range_passes == ([1] * len(layout.plans) if shift > 1 else [])
    fresh, fresh_grads = _terms_and_gradients(lilnetx.latent_tensors(model), model, seed=2)
    assert reused == pytest.approx(fresh, rel=1e-6)
    for a, b in zip(reused_grads, fresh_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())


def test_kernel_reports_a_table_that_does_not_cover_the_latents():
    _ext()
    members = _members(1)
    (table, lo), = grid_tables([FactorizedDensity(1)], [torch.cat(members) / 4])
    assert fused.native_group_terms(members, 1, table, lo).bounds is None
    table = fused.native_bits_grid(FactorizedDensity(1), -2, 4).detach()  # points -2, ..., 4
    inside, last_cell = torch.tensor([[3.96]]), torch.tensor([[4.01]])  # the last cell has no slope to interpolate
    assert fused.native_group_terms([inside], 1, table, -2, noise=False).bounds is not None
    for z in (last_cell, torch.tensor([[float("nan")]]), torch.tensor([[-float("inf")]])):
        assert fused.native_group_terms([z], 1, table, -2, noise=False).bounds is None


def test_latents_that_turn_nan_are_a_clear_error_with_a_reused_range():
    _ext()
    model = _model()
    layout = TermsLayout(lilnetx.latent_tensors(model))
    TrainingTerms(layout, native=True)
    with torch.no_grad():
        layout.tensors[-1].latent.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        TrainingTerms(layout, native=True)
    with pytest.raises(LayoutError, match="structure 'channel' given with a TermsLayout built for 'slice'"):
        TrainingTerms(layout, structure="channel")


def test_short_training_on_the_kernel_stays_with_the_eager_pass(monkeypatch):
    """Same seed, 60 steps on learnable labels: the C++ pass (its own noise draws) and the eager pass reach the
    same losses and rate to 2 %, by different latents."""
    _ext()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 1, 12, 12, generator=g)
    y = x.flatten(1)[:, :10].argmax(1)  # learnable labels: the output layer starts near chance (loss ln 10)
    data = torch.utils.data.TensorDataset(x, y)
    config = TrainConfig(lr=3e-2, batch_size=32, decoder_dtype=None, lambda_rate=1.0, epochs=60, warmup_epochs=0)
    runs = {}
    for path in ("native", "eager"):
        monkeypatch.setenv(fused.ENV_SWITCH, path)
        trainer = Trainer(_model(), data, None, config, progress=False)
        torch.manual_seed(3)
        history = [trainer.step(x, y) for _ in range(60)]
        latents = torch.cat([t.latent.detach().reshape(-1) for t in trainer.tensors])
        runs[path] = (history[0]["task"].item(), history[-1]["task"].item(), history[-1]["bits"].item(), latents)
    (first_n, last_n, bits_n, z_n), (first_e, last_e, bits_e, z_e) = runs["native"], runs["eager"]
    assert last_n < 0.9 * first_n and last_e < 0.9 * first_e  # both train
    assert last_n == pytest.approx(last_e, rel=0.02) and bits_n == pytest.approx(bits_e, rel=0.02)
    assert not torch.equal(z_n, z_e)  # different noise: really two paths
