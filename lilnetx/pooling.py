"""Max pooling through the compiled kernel where that measured faster than PyTorch's own.

PyTorch's CPU ``max_pool2d`` spends ~4 ns per input value at batch 1 (~50 µs for LeNet5's first pooling, where
onnxruntime takes ~13 µs); the kernel (one of :mod:`lilnetx.kernels`) reads each window once. ``use_kernel_pooling``
rewrites a model's ``F.max_pool2d`` / ``torch.max_pool2d`` calls and ``nn.MaxPool2d`` modules (no dilation, floor
mode, no indices) into ``KernelMaxPool2d`` layers, which measure both forms per input configuration
(:class:`lilnetx.measured.MeasuredLayer`). Outputs are identical; a model ``torch.fx`` cannot trace is returned
as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.utils import _pair

from lilnetx import kernels
from lilnetx.channel_graph import apply_passes
from lilnetx.measured import MeasuredLayer


class KernelMaxPool2d(MeasuredLayer):
    """``F.max_pool2d`` with a ``kernel_size``, ``stride`` and ``padding`` (no dilation, floor mode), run by the
    kernel where it measured faster."""

    OP, FORMS, KERNEL_FORM = "max_pool2d", ("torch", "kernel"), "kernel"

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, *, form: str = "auto"):
        super().__init__(form)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride else self.kernel_size
        self.padding = _pair(padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, form={self.form}"

    def run(self, form: str, x: Tensor) -> Tensor:
        if form == "kernel":
            return kernels.op("max_pool2d")(x, *self.kernel_size, *self.stride, *self.padding)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def kernel_takes(self, x: Tensor) -> bool:
        return self.kernel_tensor(x, 4)

    def signature(self) -> list[object]:
        return [list(self.kernel_size), list(self.stride), list(self.padding)]  # channels: in the configuration


def _call_options(input: object, kernel_size: object, stride: object = None, padding: object = 0,
                  dilation: object = 1, ceil_mode: bool = False, return_indices: bool = False) -> dict | None:
    """The options of a ``max_pool2d`` call, or ``None`` where the kernel does not do them."""
    if _pair(dilation) != (1, 1) or ceil_mode or return_indices:
        return None
    return {"kernel_size": kernel_size, "stride": stride or None, "padding": padding}


def _options(node: fx.Node, modules: dict[str, nn.Module]) -> dict | None:
    if node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
        return _call_options(*node.args, **node.kwargs)
    module = modules.get(node.target) if node.op == "call_module" else None
    if type(module) is nn.MaxPool2d and len(node.args) == 1 and not node.kwargs:
        return _call_options(None, module.kernel_size, module.stride, module.padding, module.dilation,
                             module.ceil_mode, module.return_indices)
    return None


def use_kernel_pooling(model: nn.Module) -> nn.Module:
    """``model`` with each max pooling the kernel does as a :class:`KernelMaxPool2d` (``model`` itself where there
    is none or it cannot be traced)."""
    return apply_passes(model, [pooling_pass], leaves=(MeasuredLayer,))


def pooling_pass(traced: fx.GraphModule) -> int:
    """:func:`use_kernel_pooling` on a traced model's graph, in place; returns how many poolings it replaced."""
    modules = dict(traced.named_modules())
    pooled = 0
    for node in list(traced.graph.nodes):
        options = _options(node, modules)
        if options is None or any(not isinstance(v, int | tuple | type(None)) for v in options.values()):
            continue
        name = f"kernel_pool{pooled}"
        traced.add_submodule(name, KernelMaxPool2d(**options))
        pooled += 1
        with traced.graph.inserting_after(node):
            replacement = traced.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        traced.graph.erase_node(node)
    return pooled
