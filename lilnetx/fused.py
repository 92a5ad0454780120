"""One pass per latent group for the training-time terms: rate, L2, slice lasso and the rounded latents.

A group's latents are concatenated once per step; one autograd ``Function`` computes the interpolated noisy
rate, ``ΣZ²``, the slice lasso and ``round(Z)`` (whose decoding every member shares), and its backward
sums all their gradients in one go. The per-element work lives in two plain functions of tensors
(:func:`_forward_kernel`, :func:`_backward_kernel`) run eagerly or compiled by ``torch.compile`` (switch:
``compiled=``); the noise is drawn outside them with ``torch.rand_like`` so both give the same values as
the unfused path (``FactorizedDensity.total_bits`` and per-tensor priors), which the tests check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from lilnetx.density import GRID_RESOLUTION, FactorizedDensity


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
    bounds = torch.stack([torch.stack(torch.aminmax(r.detach())) for r in rows]).tolist()
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
