"""Factorised learned density (Ballé et al. 2018) over integer latents.

Training life: ``bits(x)`` gives the differentiable self-information of each value under the learned CDF
``F``: ``P(x) = F(x + 1/2) - F(x - 1/2)``. Deployment life: ``likelihood`` at the integers is frozen once into
integer frequency tables by ``freeze`` (called by ``lilnetx.save``), so decoding needs no floating point at all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lilnetx import entropy_coding as ec

LIKELIHOOD_FLOOR = 1e-9
GRID_RESOLUTION = 32  # grid points per unit for the interpolated training rate


class FactorizedDensity(nn.Module):
    """One small monotone network per channel giving a CDF over the real line.

    Inputs are laid out as ``(N, channels)`` rows: column ``c`` is modelled by channel ``c``. The network's
    matrices, biases and factors are views of one parameter, ``flat`` (their concatenation in that order): a
    training step handles one tensor per density instead of ``3 * layers - 1`` (the optimiser, the autograd
    engine and the fused pass each cost per tensor). The state dict keeps one entry per view
    (``matrices.0``, ..., ``biases.0``, ..., ``factors.0``, ...).
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        self.filters = tuple(filters)
        dims = (1, *self.filters, 1)
        layers = len(dims) - 1
        scale = init_scale ** (1 / layers)
        matrices, biases, factors = [], [], []
        for i in range(layers):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            matrices.append(torch.full((channels, dims[i + 1], dims[i]), init))
            biases.append(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5))
            if i + 1 < layers:
                factors.append(torch.zeros(channels, dims[i + 1], 1))
        parts = [*matrices, *biases, *factors]
        self.view_names = ([f"matrices.{i}" for i in range(layers)] + [f"biases.{i}" for i in range(layers)]
                           + [f"factors.{i}" for i in range(layers - 1)])
        self.view_shapes = [tuple(t.shape) for t in parts]
        self.flat = nn.Parameter(torch.cat([t.reshape(-1) for t in parts]))

    def views(self, flat: Tensor | None = None) -> list[Tensor]:
        """The matrices, biases and factors as views of ``flat`` (default: the parameter), in that order."""
        flat = self.flat if flat is None else flat
        sizes = [math.prod(shape) for shape in self.view_shapes]
        return [part.view(shape) for part, shape in zip(flat.split(sizes), self.view_shapes, strict=True)]

    def network(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``(matrices, biases, factors)``, views of the parameter."""
        views, layers = self.views(), len(self.filters) + 1
        return views[:layers], views[layers:2 * layers], views[2 * layers:]

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        flat = self.flat if keep_vars else self.flat.detach()
        for name, view in zip(self.view_names, self.views(flat), strict=True):
            destination[prefix + name] = view

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        for name, view in zip(self.view_names, self.views(self.flat.detach()), strict=True):
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
            elif not isinstance(state_dict[key], Tensor) or state_dict[key].shape != view.shape:
                found = tuple(getattr(state_dict[key], "shape", ()))
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {found} from checkpoint, "
                                  f"the shape in current model is {tuple(view.shape)}.")
            else:
                with torch.no_grad():
                    view.copy_(state_dict[key])
        if strict:
            unexpected_keys += [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in self.view_names]

    def _logits_cumulative(self, x: Tensor) -> Tensor:
        """``x``: ``(channels, 1, N)`` -> logits of the CDF, same shape."""
        return _cdf_logits(x, *self.network())

    def likelihood(self, rows: Tensor) -> Tensor:
        """Probability mass of the unit interval around each value; ``rows``: ``(N, channels)``."""
        if rows.dim() != 2 or rows.shape[1] != self.channels:
            raise ValueError(f"expected rows of shape (N, {self.channels}), got {tuple(rows.shape)}")
        x = rows.t().unsqueeze(1)
        both = self._logits_cumulative(torch.cat([x - 0.5, x + 0.5], dim=2))
        lower, upper = both.split(x.shape[2], dim=2)
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.squeeze(1).t()

    def bits(self, rows: Tensor) -> Tensor:
        """Self-information in bits of each value, shape ``(N, channels)``."""
        return -torch.log2(self.likelihood(rows).clamp_min(LIKELIHOOD_FLOOR))

    def bits_grid(self, lo: int, hi: int, resolution: int, *, compiled: bool = False) -> Tensor:
        """Bits at ``lo, lo + 1/resolution, ..., hi`` for every channel, shape ``(channels, points)``.

        The CDF is evaluated once per grid edge ``x - 1/2``: the edge ``x + 1/2`` of a point is the lower edge
        of the point ``resolution`` steps on, so each evaluation serves two intervals. ``compiled=True``
        runs it through ``torch.compile`` (same values).
        """
        param = self.flat
        steps = torch.arange((hi - lo) * resolution + 1 + resolution, dtype=param.dtype, device=param.device)
        edges = (steps / resolution + (lo - 0.5)).expand(self.channels, -1)
        grid_bits = _compiled_grid_bits() if compiled else _grid_bits
        return grid_bits(edges, resolution, *self.network())

    def total_bits(self, values: Tensor | Sequence[Tensor], resolution: int = GRID_RESOLUTION,
                   noise: bool = False) -> Tensor:
        """Sum of the bits of all ``values`` (rows ``(N, channels)``, or a list of such tensors).

        Differentiable in the values and the density. The density is evaluated once on a grid covering the
        values (``resolution`` points per unit) and linearly interpolated: exact at integers when
        ``resolution`` is 1 and the values are integers; linear time with a handful of passes per value.
        ``noise=True`` adds U(-1/2, 1/2) noise to the values first (the training relaxation).
        """
        parts = [values] if isinstance(values, Tensor) else list(values)
        parts = [p for p in parts if p.numel()]
        if not parts:
            return self.flat.sum() * 0
        bounds = torch.stack([torch.stack(torch.aminmax(p.detach())) for p in parts])
        if not torch.isfinite(bounds).all():
            raise FloatingPointError("latents contain NaN or infinity: training diverged; lower the learning "
                                     "rate or enable gradient clipping (TrainConfig.grad_clip)")
        lo = math.floor(bounds[:, 0].min().item()) - 1
        hi = math.ceil(bounds[:, 1].max().item()) + 1
        table = self.bits_grid(lo, hi, resolution)
        return sum(_InterpolatedSum.apply(p, table, float(lo), resolution, noise) for p in parts)

    @torch.no_grad()
    def integer_pmfs(self, lo: Sequence[int], hi: Sequence[int]) -> list[np.ndarray]:
        """Probabilities (float64) of the integers ``lo[c]..hi[c]`` of each channel ``c``, unquantised.
        One likelihood call: column ``c`` repeats ``hi[c]`` past its end."""
        param = self.flat
        low, high = (torch.as_tensor(np.asarray(v), dtype=param.dtype, device=param.device) for v in (lo, hi))
        steps = torch.arange(int((high - low).max()) + 1, dtype=param.dtype, device=param.device)[:, None]
        pmf = self.likelihood(torch.minimum(low + steps, high)).double().cpu().numpy()
        return [pmf[:int(hi[c] - lo[c]) + 1, c] for c in range(self.channels)]

    def freeze(self, lo: Sequence[int], counts: Sequence[np.ndarray], *, histogram: bool = False) -> list[ec.Table]:
        """The integer frequency tables the entropy coder codes with (CompressAI's ``update()``): channel
        ``c``'s table over the symbols ``lo[c] .. lo[c] + len(counts[c]) - 1``, the learned probabilities
        quantised once, at the resolution that codes ``counts[c]`` (the symbols' histogram) in the fewest bits
        including the table. ``histogram=True`` lets each channel take its histogram's table instead when
        that is smaller."""
        hi = [int(low) + len(c) - 1 for low, c in zip(lo, counts, strict=True)]
        learned = self.integer_pmfs(lo, hi)
        return [ec.choose_table(int(lo[c]), counts[c], learned[c], histogram=histogram) for c in range(self.channels)]


def _cdf_logits(x: Tensor, matrices: list[Tensor], biases: list[Tensor], factors: list[Tensor]) -> Tensor:
    """The per-channel monotone network: ``x`` ``(channels or 1, 1, N)`` -> CDF logits ``(channels, 1, N)``."""
    logits = x
    for i, (matrix, bias) in enumerate(zip(matrices, biases, strict=True)):
        logits = torch.baddbmm(bias, F.softplus(matrix), logits.expand(matrix.shape[0], -1, -1))
        if i < len(factors):
            logits = logits + torch.tanh(factors[i]) * torch.tanh(logits)
    return logits


def _grid_bits(edges: Tensor, shift: int, matrices: list[Tensor], biases: list[Tensor],
               factors: list[Tensor]) -> Tensor:
    """Bits of the intervals ``[edges[:, i], edges[:, i + shift]]``; ``edges``: ``(channels, n)`` -> bits
    ``(channels, n - shift)``."""
    logits = _cdf_logits(edges.unsqueeze(1), matrices, biases, factors)
    lower, upper = logits[:, :, :-shift], logits[:, :, shift:]
    sign = -torch.sign(lower + upper).detach()
    p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
    return -torch.log2(p.clamp_min(LIKELIHOOD_FLOOR)).squeeze(1)


@functools.cache
def _compiled_grid_bits() -> Callable[..., Tensor]:
    return torch.compile(_grid_bits, dynamic=True, fullgraph=True)


class _InterpolatedSum(torch.autograd.Function):
    """``sum(interp(table, values [+ noise]))``; gradients: segment slopes for values, a histogram for table.

    The table spans at least one unit beyond the values on both sides, so positions never need clamping.
    """

    @staticmethod
    def forward(ctx, values: Tensor, table: Tensor, lo: float, resolution: int, noise: bool) -> Tensor:
        channels, points = table.shape
        pos = torch.rand_like(values).add_(values).sub_(lo + 0.5) if noise else values - lo
        pos.mul_(resolution)
        index = pos.to(torch.int64)  # truncation == floor: positions are positive
        frac = pos.frac_()
        if channels > 1:
            index += torch.arange(channels, device=values.device) * points
        index = index.reshape(-1)
        frac = frac.reshape(-1)
        flat = table.reshape(-1)
        slopes = torch.cat([flat[1:] - flat[:-1], flat.new_zeros(1)])
        slope = slopes.take(index)
        total = flat.take(index).sum() + torch.dot(frac, slope)
        counts = torch.bincount(index, minlength=flat.numel()).to(table.dtype)
        upper = torch.zeros_like(flat).index_add_(0, index, frac.to(table.dtype))
        weights = counts - upper
        weights[1:] += upper[:-1]
        ctx.resolution = resolution
        ctx.save_for_backward(slope.view(values.shape), weights.view(table.shape))
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        slope, weights = ctx.saved_tensors
        return slope * (grad * ctx.resolution), grad * weights, None, None, None
