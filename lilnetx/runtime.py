"""``compile_sparse(model)``: a slimmed, slice-sparse model as TorchScript, one specialisation per input shape.

Eager PyTorch spends ~5-15 µs of Python per module call; a small network at batch 1 spends most of its time
there. ``SparseRuntime`` slims the model (``lilnetx.slim(..., sparse=True)``: BatchNorm folded, zero channels
removed, ReLU and residual additions fused into the convolutions), and on the first call with a new input shape
measures each convolution's form for it (sparse kernel or dense ``conv2d``, cached per machine), fixes those
forms, traces the model with ``torch.jit.trace`` and freezes it: later calls with that shape run the frozen
graph without Python. It is an ``nn.Module``; ``forms()`` says what each layer runs per shape.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lilnetx.measured import MeasuredLayer, measured_layers
from lilnetx.slim import slim

MAX_SPECIALISATIONS = 8  # input shapes kept traced; the oldest goes first


class SparseRuntime(nn.Module):
    """A slimmed, slice-sparse model run as frozen TorchScript per input shape (inference only)."""

    def __init__(self, model: nn.Module, example_input: Tensor | None = None):
        super().__init__()
        self.slimmed = slim(model, sparse=True, example_input=example_input)
        for name in ("pretrained_cfg", "default_cfg"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        self._traced: dict[tuple[int, ...], Any] = {}
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled() and x.requires_grad:
            return self.slimmed(x)
        key = (*x.shape, torch.get_num_threads())
        with torch.no_grad():
            traced = self._traced.get(key)
            if traced is None:
                traced = self._traced[key] = self._specialise(x)
                while len(self._traced) > MAX_SPECIALISATIONS:
                    self._traced.pop(next(iter(self._traced)))
            return traced(x)

    def _specialise(self, x: Tensor) -> Any:
        inputs: dict[str, Tensor] = {}
        layers = measured_layers(self.slimmed)
        hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: inputs.setdefault(n, args[0]))
                 for name, m in layers.items()]
        try:
            self.slimmed(x)  # measures each layer's form for this shape (cached per machine)
        finally:
            for hook in hooks:
                hook.remove()
        fixed = copy.deepcopy(self.slimmed).eval()
        for name, layer in fixed.named_modules():
            if isinstance(layer, MeasuredLayer) and layer.form == "auto" and name in inputs:
                layer.form = layers[name].decide(inputs[name])["form"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice: still supported
            traced = torch.jit.trace(fixed, x, check_trace=False)
            return torch.jit.freeze(traced.eval())

    def forms(self) -> dict[str, dict[str, str]]:
        """Per measured layer (convolution, linear, max pooling), the form it runs per input configuration
        ``"N[xHxW]/threads/isa"``."""
        return {name: {config: d["form"] for config, d in layer.decisions.items()}
                for name, layer in measured_layers(self.slimmed).items()}


def compile_sparse(model: nn.Module, example_input: Tensor | None = None) -> SparseRuntime:
    """``model`` (plain or reparameterised) as a :class:`SparseRuntime`."""
    return SparseRuntime(model, example_input)
