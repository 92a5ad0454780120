"""Sparse linear layer: ``x W^T + b`` over W's non-zero weights only (stored by output row, CSR), used only where
it measured faster than dense ``F.linear`` on the machine that runs it.

LilNetX leaves most of a fully connected layer's weights at zero (a linear layer's "slice" is one weight), and
slimming removes only whole zero rows and columns, so what remains is still mostly zeros: LeNet-300-100's first
layer keeps a few percent of its weights. The kernel (one of :mod:`lilnetx.kernels`) visits only those; with a
batch of at least one vector's width it broadcasts each weight over a vector of samples. A ``SparseLinear`` is a
:class:`lilnetx.measured.MeasuredLayer`: per batch size and thread count the faster form runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lilnetx import kernels
from lilnetx.measured import ACTIVATIONS, EMPTY, Activation, KernelLayerForm, WeightedLayer, activate


class SparseLinear(WeightedLayer):
    """An ``nn.Linear`` (float32) that skips its zero weights where that measured faster (see the module
    docstring). Inputs the kernel does not take (not 2-D float32 on the CPU, needing gradients) run ``F.linear``.
    ``activation`` (``"relu"`` / ``"relu6"``, set by :func:`lilnetx.fuse.fuse_epilogues`) is applied to the output,
    inside the kernel's store."""

    OP = "sparse_linear"

    def __init__(self, linear: nn.Linear, *, form: KernelLayerForm = "auto",
                 activation: Activation = None):
        super().__init__(linear, form, activation)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        nonzero = self.weight.ne(0)
        rows, cols = nonzero.nonzero(as_tuple=True)  # row-major: grouped by output
        ptr = torch.zeros(self.out_features + 1, dtype=torch.long)
        ptr[1:] = torch.bincount(rows, minlength=self.out_features).cumsum(0)
        self.register_buffer("row_ptr", ptr)
        self.register_buffer("col", cols.contiguous())
        self.register_buffer("val", self.weight[nonzero].contiguous())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density:.3f}, form={self.form}{self.activation_repr()}")

    def run(self, form: str, x: Tensor) -> Tensor:
        if form != "dense":
            return kernels.op("sparse_linear")(x, self.row_ptr, self.col, self.val,
                                               EMPTY if self.bias is None else self.bias,
                                               ACTIVATIONS[self.activation], form == self.KERNEL_FORM)
        return activate(F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)),
                        self.activation)

    def kernel_takes(self, x: Tensor) -> bool:
        return self.kernel_tensor(x, 2) and x.shape[1] == self.in_features

    def signature(self) -> list[Any]:
        return [self.in_features, self.out_features, self.bias is not None, self.pattern]


def eligible(module: nn.Module) -> bool:
    """Every float32 ``nn.Linear``."""
    return type(module) is nn.Linear and module.weight.dtype == torch.float32
