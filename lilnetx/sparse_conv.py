"""Slice-sparse convolution: a direct fp32 kernel that visits only the non-zero K×K kernel taps.

The C++ kernel (``lilnetx/csrc/sparse_conv.cpp``) is compiled on first use by :func:`lilnetx.native.build`
(``-O3 -march=native -fopenmp``, cached in torch's extension folder). Where no compiler exists or the build
fails, a warning says so once and every layer stays dense (same outputs, dense speed).

``sparsify(model)`` replaces each ``nn.Conv2d`` with zero taps by a ``SparseConv2d`` only where the sparse
kernel is faster: timed against dense ``conv2d`` on the layer's real input when an example input is given,
else by a cost model from ``benchmarks/sparse_speed.py`` (fraction of non-zero taps at most
``MAX_DENSITY``).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lilnetx import native
from lilnetx.errors import LilnetxError

SOURCE = native.CSRC / "sparse_conv.cpp"
# Cost model: the sparse kernel wins where at most this fraction of the taps is non-zero (3x3 stride 1 has
# the slice kernel; other K x K stride-1 kernels the per-tap one; 1x1 and strided kernels favour dense).
MAX_DENSITY = {"3x3": 0.5, "kxk": 0.35, "1x1": 0.1, "strided": 0.2}
TIMING_ROUNDS = 5
MIN_GAIN = 1.05  # sparse must be this much faster than dense when timed


class SparseConvError(LilnetxError, ValueError):
    """A convolution ``SparseConv2d`` cannot take (non-zero padding mode, string padding)."""


@functools.cache
def load_extension() -> ModuleType | None:
    """The compiled kernel, built on first use; ``None`` (with one warning) where it cannot be built."""
    return native.build(SOURCE, "lilnetx_sparse_conv", owner="lilnetx.sparse_conv", fallback="sparse layers run dense")


class SparseConv2d(nn.Module):
    """A ``Conv2d`` (fp32, zero padding, any stride / dilation / groups) that skips its zero kernel taps.

    Holds the dense weight too: inputs the kernel does not take (not float32, on another device, needing
    gradients) and machines without the extension run ``F.conv2d``.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise SparseConvError("SparseConv2d needs numeric zero padding; keep this layer a Conv2d")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation, self.groups = conv.padding, conv.dilation, conv.groups
        weight = conv.weight.detach().float()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", conv.bias.detach().float().clone() if conv.bias is not None else None)
        per_group = conv.out_channels // conv.groups
        nonzero = weight.ne(0)
        o, i, kh, kw = nonzero.nonzero(as_tuple=True)  # row-major: grouped by output channel
        ptr = torch.zeros(conv.out_channels + 1, dtype=torch.long)
        ptr[1:] = torch.bincount(o, minlength=conv.out_channels).cumsum(0)
        self.register_buffer("tap_ptr", ptr)
        self.register_buffer("tap_chan", (i + (o // per_group) * weight.shape[1]).contiguous())
        self.register_buffer("tap_kh", kh.contiguous())
        self.register_buffer("tap_kw", kw.contiguous())
        self.register_buffer("tap_w", weight[nonzero].contiguous())

    @property
    def density(self) -> float:
        """Fraction of the kernel taps that are non-zero."""
        return self.tap_w.numel() / max(1, self.weight.numel())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, density={self.density:.3f}")

    def forward(self, x: Tensor, *, slices: bool = True) -> Tensor:
        """``slices=False`` forces the per-tap loop on 3x3 stride-1 kernels (benchmarks compare the two)."""
        ext = load_extension()
        if ext is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 \
                or (torch.is_grad_enabled() and x.requires_grad):
            return F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                            self.stride, self.padding, self.dilation, self.groups)
        bias = self.bias if self.bias is not None else torch.empty(0)
        return ext.sparse_conv2d(x, self.tap_ptr, self.tap_chan, self.tap_kh, self.tap_kw, self.tap_w, bias,
                                 *self.kernel_size, *self.stride, *self.padding, *self.dilation, slices)


def _eligible(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.weight.dtype == torch.float32
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and bool(module.weight.detach().eq(0).any()))


def _block_waste(out_h: int, out_w: int) -> float:
    """Work of the kernel's register blocks (8 x 16 or 4 x 32 outputs) over the real outputs."""
    rows, cols = (8, 16) if out_w <= 16 else (4, 32)
    return (math.ceil(out_h / rows) * rows * math.ceil(out_w / cols) * cols) / (out_h * out_w)


def modelled_faster(conv: nn.Conv2d, out_size: tuple[int, int] | None = None) -> bool:
    """The cost model: is the sparse kernel expected to beat dense ``conv2d`` on this layer?

    ``out_size`` (output height, width), when known, charges the kernel for its partly used blocks.
    """
    density = float(conv.weight.detach().ne(0).float().mean())
    if out_size is not None:
        density *= _block_waste(*out_size)
    if conv.kernel_size == (1, 1):
        return density <= MAX_DENSITY["1x1"]
    if conv.stride != (1, 1):
        return density <= MAX_DENSITY["strided"]
    if conv.kernel_size == (3, 3) and conv.dilation == (1, 1):
        return density <= MAX_DENSITY["3x3"]
    return density <= MAX_DENSITY["kxk"]


def _time_ms(fn: Any, x: Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return (time.perf_counter() - start) * 1e3


@torch.no_grad()
def _timed_faster(dense: nn.Conv2d, sparse: SparseConv2d, x: Tensor) -> tuple[bool, float, float]:
    """Dense vs sparse on the layer's real input, interleaved; (sparse wins, dense ms, sparse ms)."""
    dense(x), sparse(x)  # warm-up
    dense_ms, sparse_ms = [], []
    for _ in range(TIMING_ROUNDS):
        dense_ms.append(_time_ms(dense, x))
        sparse_ms.append(_time_ms(sparse, x))
    d, s = statistics.median(dense_ms), statistics.median(sparse_ms)
    return s * MIN_GAIN < d, d, s


@torch.no_grad()
def sparsify(model: nn.Module, *, example_input: Tensor | None = None, timed: bool = True
             ) -> dict[str, dict[str, Any]]:
    """Replace, in place, each eligible ``nn.Conv2d`` by a ``SparseConv2d`` where that is faster.

    With ``example_input`` each layer is timed on its real input (``timed=False``: the input only gives
    the output sizes the cost model needs). Returns per considered layer ``{"density", "sparse",
    "decided_by"}`` (plus ``dense_ms`` / ``sparse_ms`` when timed). Nothing changes where the extension
    cannot be built.
    """
    candidates = {name: m for name, m in model.named_modules() if _eligible(m)}
    if not candidates or load_extension() is None:
        return {}
    inputs: dict[str, Tensor] = {}
    if example_input is not None:
        hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: inputs.setdefault(n, args[0]))
                 for name, m in candidates.items()]
        try:
            was_training = model.training
            model.eval()
            model(example_input)
            model.train(was_training)
        finally:
            for h in hooks:
                h.remove()
    report: dict[str, dict[str, Any]] = {}
    for name, conv in candidates.items():
        sparse = SparseConv2d(conv)
        entry: dict[str, Any] = {"density": sparse.density}
        if name in inputs and timed:
            wins, dense_ms, sparse_ms = _timed_faster(conv, sparse, inputs[name].float().contiguous())
            entry.update(decided_by="timed", dense_ms=dense_ms, sparse_ms=sparse_ms)
        else:
            out_size = tuple(conv(inputs[name][:1]).shape[2:]) if name in inputs else None
            wins = modelled_faster(conv, out_size)
            entry["decided_by"] = "model"
        entry["sparse"] = wins
        if wins:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, sparse)
        report[name] = entry
    return report
