"""Slice-sparse convolution: a direct fp32 kernel that visits only the non-zero K×K kernel taps, used only
where it measured faster than dense ``conv2d`` on the machine that runs it.

The C++ kernel (``lilnetx/csrc/sparse_conv.cpp``) is built once per instruction set (AVX-512, AVX2, or
``-march=native`` elsewhere) by :mod:`lilnetx.native`; the best variant this CPU runs is loaded
(``LILNETX_SPARSE_ISA=avx2`` picks another). ``lilnetx build-kernels`` (run by ``make``) builds it ahead of
first use. Where no compiler exists or the build fails, a warning says so once and every layer stays dense.

A ``SparseConv2d`` decides per input configuration (batch, height, width, thread count): the first call with a
new configuration times the kernel against dense ``conv2d`` on that very input, interleaved, and keeps the
faster (sparse only when it wins by ``MIN_GAIN``). Decisions are cached in memory and under ``$LILNETX_HOME``
(:mod:`lilnetx.calibration`), keyed by CPU model, ISA, torch version and the layer's signature, so each layer
is measured once per machine. ``sparsify(model)`` swaps every float32 convolution for one.
"""

from __future__ import annotations

import functools
import hashlib
import os
from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lilnetx import calibration, native
from lilnetx.errors import LilnetxError

SOURCE = native.CSRC / "sparse_conv.cpp"
KERNELS = native.CSRC / "sparse_conv_kernels.h"  # the torch-free loops SOURCE includes
ISA_ENV = "LILNETX_SPARSE_ISA"
MIN_GAIN = 1.03  # the kernel must be this much faster than dense, as measured, to be used
TIMING_BUDGET_MS = 60.0  # per decision, across all rounds
MEASURE_VERSION = 2  # part of every cached decision's key: a change in how decisions are measured re-measures
Form = Literal["auto", "sparse", "dense"]
Activation = Literal["relu", "relu6"] | None
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}  # the kernel's activation codes


class SparseConvError(LilnetxError, ValueError):
    """A convolution ``SparseConv2d`` cannot take (non-zero padding mode, string padding) or a bad option."""


def kernel_isa() -> native.Isa:
    """The instruction-set variant this process uses: ``$LILNETX_SPARSE_ISA`` or the best the CPU runs."""
    name = os.environ.get(ISA_ENV)
    return native.isa_named(name) if name else native.runnable_isas()[0]


@functools.cache
def _load(isa: native.Isa) -> ModuleType | None:
    return native.build_isa(SOURCE, "lilnetx_sparse_conv", isa, owner="lilnetx.sparse_conv",
                            fallback="sparse layers run dense")


def kernel_built() -> bool:
    """Whether the kernel for :func:`kernel_isa` is loaded or already compiled (so no build is due)."""
    return native.is_built(SOURCE, "lilnetx_sparse_conv", kernel_isa())


def load_extension() -> ModuleType | None:
    """The compiled kernel for :func:`kernel_isa`, built on first use; ``None`` (one warning) where it cannot be."""
    return _load(kernel_isa())


def _extension() -> ModuleType | None:
    """:func:`load_extension`, remembered for this process's ISA choice (a cheap call per layer and forward)."""
    isa = os.environ.get(ISA_ENV, "")
    if _loaded.get("isa") != isa:
        _loaded.clear()
        _loaded.update(isa=isa, ext=load_extension())
    return _loaded["ext"]


_loaded: dict[str, Any] = {}
_EMPTY = torch.empty(0)


class SparseConv2d(nn.Module):
    """A ``Conv2d`` (fp32, zero padding, any stride / dilation / groups) that skips its zero kernel taps where
    that measured faster.

    ``form="auto"`` measures per input configuration (see the module docstring); ``"sparse"`` / ``"dense"``
    force one form (benchmarks). Holds the dense weight too: inputs the kernel does not take (not float32, on
    another device, needing gradients) and machines without the extension run ``F.conv2d``.
    ``decisions`` maps ``"N×H×W/threads"`` to what was measured. ``activation`` (``"relu"`` or ``"relu6"``, set
    by :func:`lilnetx.fuse.fuse_epilogues`) is applied to the output, and ``forward(x, residual)`` adds
    ``residual`` before it, inside the kernel's store.
    """

    def __init__(self, conv: nn.Conv2d, *, form: Form = "auto", activation: Activation = None):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise SparseConvError("SparseConv2d needs numeric zero padding; keep this layer a Conv2d")
        if form not in ("auto", "sparse", "dense"):
            raise SparseConvError(f"form must be 'auto', 'sparse' or 'dense', not {form!r}")
        if activation not in ACTIVATIONS:
            raise SparseConvError(f"activation must be one of {list(ACTIVATIONS)}, not {activation!r}")
        self.form, self.activation = form, activation
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
        slices = nonzero.flatten(2).any(2)
        self.zero_slice_share = float(1 - slices.float().mean()) if slices.numel() else 0.0
        self.pattern = hashlib.sha256(slices.numpy().tobytes() + nonzero.numpy().tobytes()).hexdigest()[:16]
        self.decisions: dict[str, dict[str, Any]] = {}
        self._fast: dict[tuple[torch.Size, int], str] = {}  # (input shape, threads) -> form, for the hot path
        self._geometry = (*self.kernel_size, *self.stride, *self.padding, *self.dilation)

    @property
    def density(self) -> float:
        """Fraction of the kernel taps that are non-zero."""
        return self.tap_w.numel() / max(1, self.weight.numel())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, density={self.density:.3f}, form={self.form}"
                + (f", activation={self.activation}" if self.activation else ""))

    def dense(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        out = F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                       self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            out = out + residual
        if self.activation == "relu":
            return F.relu(out)
        return F.relu6(out) if self.activation == "relu6" else out

    def sparse(self, x: Tensor, residual: Tensor | None = None, *, slices: bool = True) -> Tensor:
        """The kernel (``slices=False``: the per-tap loop on 3x3 stride-1 kernels, for comparison)."""
        ext = _extension()
        if ext is None:
            raise native.NativeKernelError("the sparse kernel could not be built here (see the warning); "
                                           "use SparseConv2d.dense")
        b = self._buffers
        kernel = getattr(torch.ops, ext.__name__).sparse_conv2d if torch.jit.is_tracing() else ext.sparse_conv2d
        return kernel(x, b["tap_ptr"], b["tap_chan"], b["tap_kh"], b["tap_kw"], b["tap_w"],
                                 _EMPTY if b["bias"] is None else b["bias"], *self._geometry, slices,
                                 _EMPTY if residual is None else residual, ACTIVATIONS[self.activation])

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        form = self.form
        if form == "auto" and self._kernel_takes(x, residual):
            form = self._fast.get((x.shape, torch.get_num_threads())) or self.decide(x)["form"]
        if form == "sparse" and self._kernel_takes(x, residual):
            return self.sparse(x.contiguous(), residual)
        return self.dense(x, residual)

    def _kernel_takes(self, x: Tensor, residual: Tensor | None = None) -> bool:
        if x.dtype is not torch.float32 or not x.is_cpu or x.dim() != 4 or _extension() is None:
            return False
        if x.requires_grad and torch.is_grad_enabled():
            return False
        return residual is None or (residual.dtype is torch.float32 and residual.is_cpu
                                    and residual.shape == self.output_shape(x)
                                    and not (residual.requires_grad and torch.is_grad_enabled()))

    def output_shape(self, x: Tensor) -> tuple[int, ...]:
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (n, self.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def decide(self, x: Tensor) -> dict[str, Any]:
        """The form for ``x``'s configuration: remembered, else from the machine's cache, else measured now."""
        n, _, h, w = x.shape
        config = f"{n}x{h}x{w}/{torch.get_num_threads()}/{os.environ.get(ISA_ENV, '')}"
        decision = self.decisions.get(config)
        if decision is None:
            isa = kernel_isa()
            name = calibration.key("sparse_conv2d", MEASURE_VERSION, native.cpu_model(), isa.name,
                                   torch.__version__, config, self.signature())
            store = calibration.cache()
            cached = store.get(name)
            if cached is not None and cached.get("form") in ("sparse", "dense"):
                decision = {**cached, "decided_by": "cache"}
            else:
                decision = self.measure(x.contiguous())
                store.put(name, {k: v for k, v in decision.items() if k != "decided_by"})
            self.decisions[config] = decision
        self._fast[(x.shape, torch.get_num_threads())] = decision["form"]
        return decision

    @torch.no_grad()
    def measure(self, x: Tensor) -> dict[str, Any]:
        """Time the kernel against dense ``conv2d`` on ``x``, interleaved; the faster form and both times (each
        the fastest of its rounds: a decision is cached, so it must not follow a moment's load on the machine)."""
        calls = {"dense": lambda: self.dense(x), "sparse": lambda: self.sparse(x)}
        first = calibration.interleaved_ms(calls, rounds=1)
        rounds = int(min(25, max(5, TIMING_BUDGET_MS / max(1e-3, sum(first.values())))))
        ms = calibration.interleaved_ms(calls, rounds=rounds, warmup=0, statistic=min)
        form = "sparse" if ms["sparse"] * MIN_GAIN <= ms["dense"] else "dense"
        return {"form": form, "dense_ms": ms["dense"], "sparse_ms": ms["sparse"], "rounds": rounds,
                "decided_by": "measured"}

    def signature(self) -> list[Any]:
        return [self.in_channels, self.out_channels, list(self.kernel_size), list(self.stride), list(self.padding),
                list(self.dilation), self.groups, self.bias is not None, self.pattern]


def _eligible(module: nn.Module) -> bool:
    """Every float32 ``Conv2d`` with numeric zero padding: the kernel, a direct convolution without im2col, can
    beat dense ``conv2d`` on small layers even without a zero tap (e.g. 110 µs -> a few µs for a 1-channel 5x5
    conv at batch 1); the measurement decides."""
    return (type(module) is nn.Conv2d and module.weight.dtype == torch.float32
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


@torch.no_grad()
def sparsify(model: nn.Module, *, example_input: Tensor | None = None, form: Form = "auto"
             ) -> dict[str, dict[str, Any]]:
    """Replace, in place, each float32 ``nn.Conv2d`` with numeric zero padding by a ``SparseConv2d``.

    With ``form="auto"`` each layer runs whichever form measured faster for the configuration it is called
    with; ``example_input`` (a batch) makes those measurements now instead of at the first call. Returns per
    layer ``{"density", "zero_slice_share", "form", "dense_ms", "sparse_ms", "speedup", "decided_by"}`` for the
    example's configuration (``form`` is ``"first call"`` without one). Nothing changes where the extension
    cannot be built.
    """
    candidates = {name: m for name, m in model.named_modules() if _eligible(m)}
    if not candidates or load_extension() is None:
        return {}
    layers: dict[str, SparseConv2d] = {}
    for name, conv in candidates.items():
        layers[name] = SparseConv2d(conv, form=form)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, layers[name])
    inputs: dict[str, Tensor] = {}
    if example_input is not None:
        hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: inputs.setdefault(n, args[0]))
                 for name, m in layers.items()]
        try:
            was_training = model.training
            model.eval()
            model(example_input)
            model.train(was_training)
        finally:
            for h in hooks:
                h.remove()
    return {name: layer_report(layer, inputs.get(name)) for name, layer in layers.items()}


def layer_report(layer: SparseConv2d, x: Tensor | None) -> dict[str, Any]:
    """What ``layer`` runs for input ``x`` (measured if not yet), with both timings where measured."""
    entry: dict[str, Any] = {"density": layer.density, "zero_slice_share": layer.zero_slice_share}
    if layer.form != "auto":
        return {**entry, "form": layer.form, "decided_by": "forced"}
    if x is None or not layer._kernel_takes(x):
        return {**entry, "form": "first call", "decided_by": None}
    decision = layer.decide(x)
    return {**entry, **{k: decision[k] for k in ("form", "dense_ms", "sparse_ms", "decided_by")},
            "speedup": decision["dense_ms"] / decision["sparse_ms"] if decision["sparse_ms"] else None}
