"""Slice-sparse convolution: a direct fp32 kernel that visits only the non-zero K×K kernel taps, used only
where it measured faster than dense ``conv2d`` on the machine that runs it (split over the threads or, where
that measured faster, on the calling thread alone).

The kernel is one of the compiled inference kernels (:mod:`lilnetx.kernels`). A ``SparseConv2d`` is a
:class:`lilnetx.measured.MeasuredLayer`: per input configuration (batch, height, width, thread count) it runs
whichever of dense ``conv2d`` and the kernel measured faster on that very input (the kernel only when it wins by
``MIN_GAIN``), decisions cached per machine. ``sparsify(model)`` swaps every float32 convolution with numeric zero
padding for one (and every float32 linear layer for a :class:`lilnetx.sparse_linear.SparseLinear`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lilnetx import kernels
from lilnetx.measured import (
    ACTIVATIONS,
    EMPTY,
    Activation,
    KernelLayerForm,
    LayerOptionError,
    WeightedLayer,
    activate,
    recorded_inputs,
)


class SparseConvError(LayerOptionError):
    """A convolution ``SparseConv2d`` cannot take (non-zero padding mode, string padding) or a bad option."""


class SparseConv2d(WeightedLayer):
    """A ``Conv2d`` (fp32, zero padding, any stride / dilation / groups) that skips its zero kernel taps where
    that measured faster.

    ``form="auto"`` measures per input configuration (see :class:`lilnetx.measured.MeasuredLayer`); ``"sparse"``
    (the kernel over all threads), ``"sparse-serial"`` (on the calling thread) or ``"dense"`` force one form
    (benchmarks). Holds the dense weight too: inputs the kernel does not take (not
    float32, on another device, needing gradients) and machines without the extension run ``F.conv2d``.
    ``activation`` (``"relu"`` or ``"relu6"``, set
    by :func:`lilnetx.fuse.fuse_epilogues`) is applied to the output, and ``forward(x, residual)`` adds
    ``residual`` before it, inside the kernel's store.
    """

    OP = "sparse_conv2d"

    def __init__(self, conv: nn.Conv2d, *, form: KernelLayerForm = "auto", activation: Activation = None):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise SparseConvError("SparseConv2d needs numeric zero padding; keep this layer a Conv2d")
        super().__init__(conv, form, activation)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation, self.groups = conv.padding, conv.dilation, conv.groups
        weight = self.weight
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
        self._geometry = (*self.kernel_size, *self.stride, *self.padding, *self.dilation)
        self._plans: dict[tuple[Any, ...], tuple[Tensor, ...]] = {}  # (C, H, W, slices) -> the kernel's plan

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, density={self.density:.3f}, form={self.form}"
                f"{self.activation_repr()}")

    def dense(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        out = F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                       self.stride, self.padding, self.dilation, self.groups)
        return activate(out if residual is None else out + residual, self.activation)

    def sparse(self, x: Tensor, residual: Tensor | None = None, *, slices: bool = True, parallel: bool = True
               ) -> Tensor:
        """The kernel (``slices=False``: the per-tap loop where a slice loop exists, for comparison; ``parallel=False``:
        on the calling thread alone)."""
        return kernels.op("sparse_conv2d_run")(x, *self.plan(x, slices), EMPTY if self.bias is None else self.bias,
                                               EMPTY if residual is None else residual, ACTIVATIONS[self.activation],
                                               parallel)

    def plan(self, x: Tensor, slices: bool = True) -> tuple[Tensor, ...]:
        """The kernel's plan for ``x``'s size (where each non-zero tap reads, its weights, the register block),
        made once per size: a traced model holds it as constants."""
        key = (*(int(d) for d in x.shape[1:]), slices)  # ints: a tracer's sizes are tensors
        plan = self._plans.get(key)
        if plan is None:
            b = self._buffers
            plan = self._plans[key] = tuple(kernels.required().sparse_conv2d_plan(
                b["tap_ptr"], b["tap_chan"], b["tap_kh"], b["tap_kw"], b["tap_w"], *key[:3], *self._geometry, slices))
        return plan

    def run(self, form: str, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if form == "dense":
            return self.dense(x, residual)
        return self.sparse(x, residual, parallel=form == self.KERNEL_FORM)

    def kernel_takes(self, x: Tensor, residual: Tensor | None = None) -> bool:
        if not self.kernel_tensor(x, 4) or x.shape[1] != self.in_channels:
            return False
        return residual is None or (self.kernel_tensor(residual) and residual.shape == self.output_shape(x))

    def output_shape(self, x: Tensor) -> tuple[int, ...]:
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (n, self.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def signature(self) -> list[Any]:
        return [self.in_channels, self.out_channels, list(self.kernel_size), list(self.stride), list(self.padding),
                list(self.dilation), self.groups, self.bias is not None, self.pattern]


def eligible(module: nn.Module) -> bool:
    """Every float32 ``Conv2d`` with numeric zero padding: the kernel, a direct convolution without im2col, can
    beat dense ``conv2d`` on small layers even without a zero tap (e.g. 110 µs -> a few µs for a 1-channel 5x5
    conv at batch 1); the measurement decides."""
    return (type(module) is nn.Conv2d and module.weight.dtype == torch.float32
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


@torch.no_grad()
def sparsify(model: nn.Module, *, example_input: Tensor | None = None, form: KernelLayerForm = "auto"
             ) -> dict[str, dict[str, Any]]:
    """Replace, in place, each float32 ``nn.Conv2d`` with numeric zero padding by a ``SparseConv2d`` and each
    float32 ``nn.Linear`` by a :class:`lilnetx.sparse_linear.SparseLinear`.

    With ``form="auto"`` each layer runs whichever form measured faster for the configuration it is called
    with; ``example_input`` (a batch) makes those measurements now instead of at the first call. Returns per
    layer ``{"density", "form", "dense_ms", "sparse_ms", "speedup", "decided_by"}`` (convolutions also
    ``"zero_slice_share"``) for the example's configuration (``form`` is ``"first call"`` without one). Nothing
    changes where the extension cannot be built. ``sparse-serial_ms`` is there too where it was timed (several
    threads); ``speedup`` is dense over the faster kernel form.
    """
    from lilnetx import sparse_linear

    if kernels.load_extension() is None:
        return {}
    layers: dict[str, WeightedLayer] = {}
    for name, module in list(model.named_modules()):
        if eligible(module):
            layers[name] = SparseConv2d(module, form=form)
        elif sparse_linear.eligible(module):
            layers[name] = sparse_linear.SparseLinear(module, form=form)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, layers[name])
    inputs: dict[str, tuple[Any, ...]] = {}
    if example_input is not None:
        was_training = model.training
        try:
            with recorded_inputs(layers) as inputs:
                model.eval()(example_input)
        finally:
            model.train(was_training)
    return {name: layer_report(layer, inputs.get(name, (None,))[0]) for name, layer in layers.items()}


def layer_report(layer: WeightedLayer, x: Tensor | None) -> dict[str, Any]:
    """What ``layer`` runs for input ``x`` (measured if not yet), with both timings where measured."""
    entry: dict[str, Any] = {"density": layer.density}
    if isinstance(layer, SparseConv2d):
        entry["zero_slice_share"] = layer.zero_slice_share
    if layer.form != "auto":
        return {**entry, "form": layer.form, "decided_by": "forced"}
    if x is None or not layer.kernel_takes(x):
        return {**entry, "form": "first call", "decided_by": None}
    decision = layer.decide(x)
    timings = {k: v for k, v in decision.items() if k.endswith("_ms")}
    return {**entry, "form": decision["form"], **timings, "decided_by": decision["decided_by"],
            "speedup": layer.speedup(decision)}
