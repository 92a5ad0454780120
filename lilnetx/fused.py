"""One pass per latent group for the training-time terms: rate, L2, slice lasso and the rounded latents.

One pass per group computes the interpolated noisy rate, ``ΣZ²``, the slice lasso and ``round(Z)`` (whose
decoding every member shares), and its backward sums all their gradients in one go. The per-element work
runs in one of two ways:

- the C++ kernel ``lilnetx/csrc/fused_terms.cpp`` (built on first use by :mod:`lilnetx.native`): one pass over
  the members' latents in place (no concatenation) that draws the noise from a counter-based generator
  (SplitMix64 of a per-step seed taken from torch's default generator), writes the rounded latents -- or, for
  the group's decoder, the decoded weights -- and the rate histograms, and one pass back that writes every
  latent's gradient; it also evaluates the density grids (:func:`native_bits_grid`). A training step runs
  every group's grid and pass in one autograd node (:func:`native_step_terms`: per-group nodes cost more than
  the small groups' arithmetic), every group's grid in one call whose channels share the threads (a width-1
  group's grid has a single channel); :func:`native_group_terms` is one group's pass on a given table;
- eager PyTorch (:class:`_GroupTerms`, one autograd ``Function`` per group; the reference and the fallback
  where no compiler exists) on the group's concatenated latents, whose backward may be compiled by
  ``torch.compile`` (``compiled=``); its noise is ``torch.rand_like``, so it gives the same values as the
  unfused path (``FactorizedDensity.total_bits`` and per-tensor priors).

With the same draws both give the same rate, L2, lasso, rounded latents and gradients, which the tests check.
``LILNETX_FUSED=eager`` in the environment (or ``TrainingTerms(native=False)``) selects the eager path.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lilnetx import native
from lilnetx.density import GRID_RESOLUTION, FactorizedDensity

SOURCE = native.CSRC / "fused_terms.cpp"
ENV_SWITCH = "LILNETX_FUSED"  # "eager": never use the C++ kernel


def _positions(z: Tensor, draws: Tensor | None, lo: float, resolution: int) -> tuple[Tensor, Tensor]:
    """Flat table index (int32, ``point * w + channel``) and interpolation weight of every value of ``z``.

    In place on ``draws`` (the noise, consumed): on a busy CPU fresh large buffers cost more than the arithmetic.
    """
    pos = draws.add_(z).sub_(lo + 0.5) if draws is not None else z - lo
    pos.mul_(resolution)
    index = pos.to(torch.int32)  # truncation == floor: positions are positive
    frac = pos.frac_()
    if z.shape[1] > 1:
        index.mul_(z.shape[1]).add_(torch.arange(z.shape[1], dtype=torch.int32, device=z.device))
    return index.view(-1), frac.view(-1)


def _backward_kernel(grad_rounded: Tensor | None, z: Tensor, slopes: Tensor, index: Tensor, lasso: bool,
                     norms: Tensor | None, g_bits: Tensor, g_l2: Tensor, g_lasso: Tensor, resolution: int) -> Tensor:
    """Gradient of ``g_bits·bits + g_l2·ΣZ² + g_lasso·Σ‖row‖ + <grad_rounded, round(Z)>`` w.r.t. ``z``
    (``norms``: the row norms of a group wider than 1)."""
    grad = slopes.index_select(0, index).view(z.shape).mul_(g_bits * resolution)
    grad.addcmul_(z, 2 * g_l2)
    if lasso and norms is None:
        grad.addcmul_(torch.sign(z), g_lasso)
    elif lasso and norms is not None:  # z / ‖row‖, 0 for an all-zero row (the subgradient torch's norm uses)
        grad.addcmul_(z, (g_lasso / torch.where(norms == 0, 1.0, norms))[:, None])
    if grad_rounded is not None:
        grad.add_(grad_rounded)
    return grad


@functools.cache
def _compiled_backward_kernel() -> Callable[..., Tensor]:
    return torch.compile(_backward_kernel, dynamic=True, fullgraph=True)


class _GroupTerms(torch.autograd.Function):
    """``(round(z), bits, ΣZ², Σ‖row‖₂)`` of one group's rows; ``round(z)`` passes its gradient straight through.

    The interpolated rate is summed from the two histograms that its table gradient needs anyway:
    ``Σ table[i] + frac·slope[i] = counts·table + upper·slopes``.
    """

    @staticmethod
    def forward(ctx, z: Tensor, table: Tensor, lo: float, resolution: int, noise: bool, lasso: bool,
                compiled: bool):
        draws = torch.rand_like(z) if noise else None  # the same draws as FactorizedDensity.total_bits
        index, frac = _positions(z, draws, lo, resolution)
        table_t = table.t().reshape(-1)  # (points * w): flat index point * w + channel
        slopes_t = torch.diff(table, append=table[:, -1:]).t().reshape(-1)
        counts = torch.bincount(index, minlength=table_t.numel()).to(table.dtype)
        upper = torch.bincount(index, weights=frac, minlength=table_t.numel())
        del frac
        bits = torch.dot(counts, table_t) + torch.dot(upper, slopes_t)
        weights = counts.sub_(upper)
        weights[z.shape[1]:] += upper[:-z.shape[1]]  # the next grid point of the same channel
        l2 = torch.dot(z.reshape(-1), z.reshape(-1))
        norms = torch.linalg.vector_norm(z, dim=1) if lasso and z.shape[1] > 1 else None
        if not lasso:
            lasso_sum = z.new_zeros(())
        else:
            lasso_sum = norms.sum() if norms is not None else torch.linalg.vector_norm(z, ord=1)
        rounded = torch.round(z).add_(0.0)  # -0.0 -> +0.0, as round_ste
        ctx.resolution, ctx.compiled, ctx.lasso = resolution, compiled, lasso
        ctx.save_for_backward(z, slopes_t, index, norms, weights.view(table.shape[1], table.shape[0]))
        return rounded, bits, l2, lasso_sum

    @staticmethod
    def backward(ctx, grad_rounded, g_bits, g_l2, g_lasso):
        z, slopes_t, index, norms, weights = ctx.saved_tensors
        kernel = _compiled_backward_kernel() if ctx.compiled else _backward_kernel
        grad_z = kernel(grad_rounded, z, slopes_t, index, ctx.lasso, norms, g_bits, g_l2, g_lasso, ctx.resolution)
        return grad_z, (weights * g_bits).t(), None, None, None, None, None


def grid_ranges(rows: list[Tensor]) -> list[tuple[int, int]]:
    """Integer grid range of each tensor, one unit to spare on both sides (one sync for all)."""
    return table_ranges(torch.stack([torch.stack(torch.aminmax(r.detach())) for r in rows]).tolist())


def table_ranges(bounds: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Integer grid range ``(floor(min) - 1, ceil(max) + 1)`` of each ``(min, max)``; non-finite bounds mean
    training diverged."""
    if not all(math.isfinite(v) for b in bounds for v in b):
        raise FloatingPointError("latents contain NaN or infinity: training diverged; lower the learning "
                                 "rate or enable gradient clipping (TrainConfig.grad_clip)")
    return [(math.floor(lo) - 1, math.ceil(hi) + 1) for lo, hi in bounds]


def grid_tables(densities: list[FactorizedDensity], rows: list[Tensor], *, resolution: int = GRID_RESOLUTION,
                compiled: bool = False) -> list[tuple[Tensor, int]]:
    """``(bits table, lo)`` of every group on its own range (as ``total_bits``: the same positions, hence the
    same rate). Stacking the densities into one evaluation was measured: no faster, and table values that
    move by an ulp turn into visibly different slopes where the density is flat."""
    return [(d.bits_grid(lo, hi, resolution, compiled=compiled), lo)
            for d, (lo, hi) in zip(densities, grid_ranges(rows), strict=True)]


def group_terms(rows: Tensor, table: Tensor, lo: int, *, noise: bool = True, lasso: bool = True,
                compiled: bool = False, resolution: int = GRID_RESOLUTION) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(round(rows), bits, ΣZ², Σ‖row‖₂)`` of one group's concatenated ``(N, w)`` latent rows.

    ``table``: the group's density in bits on the grid ``lo, lo + 1/resolution, ...`` (:func:`grid_tables`).
    The rate is ``density.total_bits(rows, noise=noise)`` (same interpolation, same draws of the global
    generator); ``lasso=False`` gives a zero lasso term. Differentiable in ``rows`` and ``table``;
    ``round(rows)`` has the straight-through gradient of ``round_ste``.
    """
    return _GroupTerms.apply(rows, table, float(lo), resolution, noise, lasso, compiled)


@functools.cache
def load_extension() -> ModuleType | None:
    """The compiled kernel, built on first use; ``None`` (with one warning) where it cannot be built."""
    return native.build(SOURCE, "lilnetx_fused_terms", owner="lilnetx.fused",
                        fallback="the fused training pass runs in eager PyTorch")


def _extension() -> ModuleType:
    ext = load_extension()
    if ext is None:
        raise native.NativeKernelError("lilnetx.fused: the C++ kernel could not be built (see the warning: no compiler or a "
                           "failed build); use the eager path (native=False)")
    return ext


def native_usable(tensors: Sequence[Tensor]) -> bool:
    """Can the C++ kernel take these tensors (a step's latents and density parameters: contiguous float32 on the
    CPU), is it wanted (``LILNETX_FUSED`` is not ``eager``) and built?"""
    if os.environ.get(ENV_SWITCH, "").strip().lower() == "eager":
        return False
    if tensors and (tensors[0].device.type != "cpu" or tensors[0].dtype != torch.float32):
        return False  # a GPU or float64 model: no need to build the kernel to know
    ext = load_extension()
    return ext is not None and ext.all_usable(list(tensors))


def native_grid_ranges(groups: list[list[Tensor]]) -> list[tuple[int, int]]:
    """:func:`grid_ranges` of each group's members (one pass, no concatenation; C++ kernel)."""
    return table_ranges(_extension().group_ranges([[z.detach() for z in g] for g in groups]).tolist())


class _NativeGrid(torch.autograd.Function):
    """``FactorizedDensity.bits_grid`` in the C++ kernel (double inside), differentiable in the density's flat
    parameters; the forward keeps its activations, so the backward is arithmetic only."""

    @staticmethod
    def forward(ctx, lo: int, hi: int, resolution: int, filters: tuple[int, ...], flat: Tensor) -> Tensor:
        bits, saved, coef = _extension().grids_forward([flat], [filters], [lo], [hi], resolution)
        ctx.grid = (lo, hi, resolution, filters)
        ctx.save_for_backward(saved, coef, flat)
        return bits

    @staticmethod
    def backward(ctx, grad: Tensor):
        lo, hi, resolution, filters = ctx.grid
        saved, coef, flat = ctx.saved_tensors
        grad_flat, = _extension().grids_backward([flat], [filters], [lo], [hi], resolution, [saved], [coef],
                                                 [grad.contiguous()], 1.0)
        return None, None, None, None, grad_flat


def native_bits_grid(density: FactorizedDensity, lo: int, hi: int, resolution: int = GRID_RESOLUTION) -> Tensor:
    """``density.bits_grid(lo, hi, resolution)`` by the C++ kernel: one call forward, one back, instead of some
    forty small tensor operations (float32 parameters on the CPU)."""
    return _NativeGrid.apply(lo, hi, resolution, density.filters, density.flat)


def step_seed() -> int:
    """A 64-bit seed for the kernel's noise, taken from torch's default generator (``torch.manual_seed``
    reproduces it)."""
    return int(torch.empty((), dtype=torch.int64).random_())


class _NativeGroupTerms(torch.autograd.Function):
    """The C++ pass: ``(*outputs, bits, ΣZ², lasso, (min, max), covered)`` of one group's members (see
    :func:`native_group_terms`)."""

    @staticmethod
    def forward(ctx, table: Tensor, decoder: Tensor | None, lo: float, resolution: int, noise: bool, lasso: bool,
                width: int, draws: Tensor | None, seed: int, *latents: Tensor):
        ext = _extension()
        dec = decoder.detach().contiguous() if decoder is not None else None
        bits, l2, lasso_sum, slope, weights, bounds, covered, *outputs = ext.group_forward(
            list(latents), width, table.detach().contiguous(), dec, lo, resolution, seed, noise,
            None if draws is None else draws.detach().contiguous(), lasso)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(bounds, covered)
        ctx.width, ctx.resolution, ctx.lasso, ctx.decoded = width, resolution, lasso, dec is not None
        ctx.save_for_backward(slope, weights, dec, *latents)
        return (*outputs, bits, l2, lasso_sum, bounds, covered)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        *grad_outputs, g_bits, g_l2, g_lasso, _, _ = grads
        slope, weights, dec, *latents = ctx.saved_tensors
        coefficients = _coefficients(g_bits, g_l2, g_lasso)
        grad_dec, grad_latents = _group_backward(latents, ctx.width, slope, dec, grad_outputs, coefficients,
                                                 ctx.resolution, ctx.lasso)
        grad_table = weights * coefficients[0] if ctx.needs_input_grad[0] else None
        grad_dec = grad_dec if ctx.needs_input_grad[1] else None
        return (grad_table, grad_dec, None, None, None, None, None, None, None, *grad_latents)


def _coefficients(g_bits: Tensor | None, g_l2: Tensor | None, g_lasso: Tensor | None) -> tuple[float, float, float]:
    """The gradients reaching bits, ΣZ² and the lasso, as floats (an unused term: 0)."""
    return tuple(0.0 if g is None else float(g) for g in (g_bits, g_l2, g_lasso))


def _group_backward(latents: Sequence[Tensor], width: int, slope: Tensor, dec: Tensor | None,
                    grad_outputs: Sequence[Tensor | None], coefficients: tuple[float, float, float], resolution: int,
                    lasso: bool) -> tuple[Tensor | None, list[Tensor]]:
    """The C++ backward of one group: the decoder's gradient (``None`` without one) and each latent's."""
    g_bits, g_l2, g_lasso = coefficients
    grad_dec, *grad_latents = _extension().group_backward(
        list(latents), width, slope, dec, [g if g is None else g.contiguous() for g in grad_outputs],
        g_bits * resolution, 2 * g_l2, g_lasso, lasso)
    return (grad_dec.view(dec.shape) if grad_dec is not None else None), grad_latents


class NativeGroupTerms(NamedTuple):
    """What :func:`native_group_terms` returns; ``bounds`` is the latents' ``(min, max)``, or ``None`` where the
    table did not cover them (then the other fields are meaningless: rebuild the table on the latents' own range)."""

    outputs: list[Tensor]
    bits: Tensor
    l2: Tensor
    lasso: Tensor
    bounds: tuple[float, float] | None


def native_group_terms(latents: Sequence[Tensor], width: int, table: Tensor, lo: int, *,
                       decoder: Tensor | None = None, noise: bool = True, lasso: bool = True,
                       draws: Tensor | None = None, seed: int | None = None,
                       resolution: int = GRID_RESOLUTION) -> NativeGroupTerms:
    """``(outputs, bits, ΣZ², Σ‖row‖₂, bounds)`` of a group whose members' latents are ``latents`` (each a whole
    number of ``width``-wide rows, contiguous float32), by the C++ kernel (:func:`load_extension` must not be None).

    The terms are those of :func:`group_terms` on the members' concatenated rows. ``decoder`` (a scale of shape
    ``(1, 1)`` or ``(1, width)``, or a full ``(width, width)`` matrix): the outputs are the members' decoded
    weights ``round(z) * decoder`` (bit for bit as the eager decode) or ``round(rows) @ decoder`` (to float
    rounding), one per member (gradients reach the decoder too); without it, one ``(N, width)``
    tensor of the rounded rows. ``draws`` (one value in [0, 1) per latent, in member order) replaces the
    kernel's own noise, for tests against the eager path; otherwise noise ``u - 1/2`` is drawn from ``seed``
    (default: one taken from torch's default generator, :func:`step_seed`).
    """
    if seed is None:
        seed = step_seed() if noise and draws is None else 0
    *outputs, bits, l2, lasso_sum, bounds, covered = _NativeGroupTerms.apply(
        table, decoder, float(lo), resolution, noise, lasso, width, draws, seed, *latents)
    low, high = bounds.tolist()
    return NativeGroupTerms(outputs, bits, l2, lasso_sum, (low, high) if bool(covered) else None)


class StepGroup(Protocol):
    """What :func:`native_step_terms` reads of one latent group, and its table range, which it updates."""

    name: str
    width: int
    latents: list[Tensor]
    density: Tensor  # the density's flat parameters (FactorizedDensity.flat)
    filters: tuple[int, ...]  # its hidden layers' sizes
    fused_lasso: bool
    table_range: tuple[int, int] | None  # the range of the last step; None before the first


class _GroupInputs(NamedTuple):
    """One group's slice of :class:`_NativeStep`'s flat inputs."""

    density: Tensor
    decoder: Tensor | None
    latents: list[Tensor]


def _split_inputs(groups: Sequence[StepGroup], decoded: Sequence[bool], inputs: Sequence[Tensor]) -> list[_GroupInputs]:
    result, i = [], 0
    for group, has_decoder in zip(groups, decoded, strict=True):
        density, i = inputs[i], i + 1
        decoder = inputs[i] if has_decoder else None
        i += has_decoder
        result.append(_GroupInputs(density, decoder, list(inputs[i:i + len(group.latents)])))
        i += len(group.latents)
    return result


class _GroupSaved(NamedTuple):
    """What :class:`_NativeStep`'s backward needs of one group's forward."""

    slope: Tensor  # per latent: the table's slope at its position
    weights: Tensor  # the table's gradient per unit of g_bits
    grid_saved: Tensor  # the grid's activations
    coef: Tensor  # the grid's derivatives w.r.t. its logits


class _NativeStep(torch.autograd.Function):
    """The C++ passes of every group of a step in one autograd node: ``(*outputs, bits, ΣZ², lasso)`` summed over
    the groups (see :func:`native_step_terms`). What the backward needs is saved with ``save_for_backward``, so a
    backward frees it (as torch's own nodes do) however long the graph's outputs live."""

    @staticmethod
    def forward(ctx, groups: Sequence[StepGroup], decoded: Sequence[bool], seeds: Sequence[int], resolution: int,
                *inputs: Tensor):
        ext = _extension()
        parts = _split_inputs(groups, decoded, inputs)
        ranges = [group.table_range for group in groups]
        grids = _grids_forward(ext, groups, parts, ranges, resolution)
        outputs, totals, intermediates = [], [0.0, 0.0, 0.0], []
        for i, (group, part, seed) in enumerate(zip(groups, parts, seeds, strict=True)):
            dec = part.decoder.contiguous() if part.decoder is not None else None
            for attempt in range(2):
                table, grid_saved, coef = grids[3 * i:3 * i + 3]
                bits, l2, lasso_sum, slope, weights, bounds, covered, *outs = ext.group_forward(
                    part.latents, group.width, table, dec, float(ranges[i][0]), resolution, seed, True, None,
                    group.fused_lasso)
                if bool(covered):
                    break
                if attempt:
                    raise native.NativeKernelError(
                        f"lilnetx: the grid table of group {group.name!r} does not cover its latents even on their "
                        "own range (a bug; LILNETX_FUSED=eager avoids the C++ pass)")
                ranges[i] = native_grid_ranges([part.latents])[0]  # they left last step's range: their own
                grids[3 * i:3 * i + 3] = _grids_forward(ext, [group], [part], [ranges[i]], resolution)
            group.table_range = table_ranges([bounds.tolist()])[0]
            for t, value in enumerate((bits, l2, lasso_sum)):
                totals[t] += float(value)
            outputs += outs
            intermediates += _GroupSaved(slope, weights, grid_saved, coef)
        ctx.set_materialize_grads(False)
        ctx.step = (groups, decoded, resolution, ranges)
        ctx.save_for_backward(*inputs, *intermediates)
        return (*outputs, *(torch.tensor(t, dtype=torch.float32) for t in totals))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        groups, decoded, resolution, ranges = ctx.step
        saved, size = ctx.saved_tensors, len(_GroupSaved._fields)
        inputs, rest = saved[:len(saved) - size * len(groups)], saved[len(saved) - size * len(groups):]
        kept = [_GroupSaved(*rest[size * i:size * (i + 1)]) for i in range(len(groups))]
        grad_outputs, coefficients = grads[:-3], _coefficients(*grads[-3:])
        ext, needs = _extension(), iter(ctx.needs_input_grad[4:])
        parts = _split_inputs(groups, decoded, inputs)
        result: list[Tensor | None] = []
        density_slots = []  # (group, where its density gradients go in result), for the groups that want them
        o = 0
        for i, (group, part) in enumerate(zip(groups, parts, strict=True)):
            dec = part.decoder.contiguous() if part.decoder is not None else None
            count = len(part.latents) if dec is not None else 1
            grad_dec, grad_latents = _group_backward(part.latents, group.width, kept[i].slope, dec,
                                                     grad_outputs[o:o + count], coefficients, resolution,
                                                     group.fused_lasso)
            o += count
            if next(needs):
                density_slots.append((i, len(result)))
            result.append(None)
            if dec is not None:
                result.append(grad_dec if next(needs) else None)
            result += [g if next(needs) else None for g in grad_latents]
        if density_slots:  # every grid's density gradients in one call, g_bits times each table's weights
            chosen = [i for i, _ in density_slots]
            density_grads = ext.grids_backward(
                [parts[i].density for i in chosen], [groups[i].filters for i in chosen],
                [ranges[i][0] for i in chosen], [ranges[i][1] for i in chosen], resolution,
                [kept[i].grid_saved for i in chosen], [kept[i].coef for i in chosen],
                [kept[i].weights for i in chosen], coefficients[0])
            for (_, at), grad in zip(density_slots, density_grads, strict=True):
                result[at] = grad
        return (None, None, None, None, *result)


def _grids_forward(ext: ModuleType, groups: Sequence[StepGroup], parts: Sequence[_GroupInputs],
                   ranges: Sequence[tuple[int, int]], resolution: int) -> list[Tensor]:
    """``[bits, saved, coef]`` of each group's grid on its range, one after the other (one C++ call, all the
    grids' channels in one parallel loop)."""
    return ext.grids_forward([part.density for part in parts], [group.filters for group in groups],
                             [lo for lo, _ in ranges], [hi for _, hi in ranges], resolution)


class StepTerms(NamedTuple):
    """What :func:`native_step_terms` returns: each group's outputs, and bits, ΣZ², lasso summed over the groups."""

    outputs: list[list[Tensor]]
    bits: Tensor
    l2: Tensor
    lasso: Tensor


def native_step_terms(groups: Sequence[StepGroup], decoders: Sequence[Tensor | None], *,
                      resolution: int = GRID_RESOLUTION) -> StepTerms:
    """The training terms of every group of a step by the C++ kernel, in one autograd node: per group, its
    density's grid table on the range its latents had in the last step (``group.table_range``; rebuilt on their
    own range where they left it, or had none), and the pass of :func:`native_group_terms` on it with noise
    from :func:`step_seed` (one seed per group, drawn in group order). ``decoders[i]``: group i's
    decoder, whose decoded weights are its outputs (one per member), or ``None`` (one ``(N, width)`` tensor of
    rounded rows). Updates each group's ``table_range`` to its latents' range. Needs :func:`native_usable`
    latents and density parameters."""
    missing = [g for g in groups if g.table_range is None]
    if missing:
        for group, found in zip(missing, native_grid_ranges([g.latents for g in missing]), strict=True):
            group.table_range = found
    seeds = [step_seed() for _ in groups]
    decoded = [d is not None for d in decoders]
    inputs = [t for g, d in zip(groups, decoders, strict=True)
              for t in (g.density, *([d] if d is not None else []), *g.latents)]
    *flat, bits, l2, lasso = _NativeStep.apply(groups, decoded, seeds, resolution, *inputs)
    outputs, i = [], 0
    for group, has_decoder in zip(groups, decoded, strict=True):
        count = len(group.latents) if has_decoder else 1
        outputs.append(flat[i:i + count])
        i += count
    return StepTerms(outputs, bits, l2, lasso)
