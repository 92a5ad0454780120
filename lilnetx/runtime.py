"""``compile_sparse(model)``: a slimmed, slice-sparse model run by the fastest engine measured here, per input shape.

Eager PyTorch spends ~5-15 µs of Python per module call; a small network at batch 1 spends most of its time
there. ``SparseRuntime`` slims the model (``lilnetx.slim``: BatchNorm folded, zero channels removed) and keeps
a kernel form of it (``lilnetx.slim.with_kernels``: ReLU and residual additions fused into the convolutions).
On the first call with a new input shape it measures each layer's form for that shape (sparse kernel or
PyTorch's op, cached per machine), fixes those forms, traces the model with ``torch.jit.trace`` and freezes it,
then times the candidate engines on that input, interleaved, and keeps the fastest for the shape:

- ``torchscript``: the frozen graph (the kernels are TorchScript operators), the reference;
- ``torchscript-mkldnn``: the same graph after ``torch.jit.optimize_for_inference`` (oneDNN layouts kept
  between the dense convolutions);
- ``onnxruntime``: onnxruntime on the dense slimmed model, where onnxruntime is installed (the kernels do not
  run there: it is chosen where the model's zeros do not pay on this machine).

The fastest engine as measured runs the shape, among those whose outputs equal the slimmed model's (``CHECK_RTOL`` of
the largest magnitude): every engine runs the same slimmed model, so none needs a margin to be chosen (a layer's
sparse form does: ``lilnetx.measured.MIN_GAIN``). Later calls with that shape run without Python.
It is an ``nn.Module``; ``forms()`` says what each layer runs per shape and ``engines()`` which engine.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lilnetx.calibration import pick_fastest
from lilnetx.errors import LilnetxError
from lilnetx.measured import MeasuredLayer, measured_layers, recorded_inputs
from lilnetx.slim import default_input, outputs_agree, slim, with_kernels

ENGINES = ("torchscript", "torchscript-mkldnn", "onnxruntime")
CHECK_RTOL = 1e-4  # an engine's outputs may differ from the slimmed model's by this much of their largest magnitude
MAX_SPECIALISATIONS = 8  # input shapes kept; the oldest goes first
TIMING_BUDGET_MS = 1000.0  # per shape, across the engines' timed rounds (at least 3 rounds, at most MAX_ROUNDS)
MAX_ROUNDS = 30
Engine = Callable[[Tensor], Tensor]


class EngineError(LilnetxError, ValueError):
    """An unknown engine was asked for."""


class SparseRuntime(nn.Module):
    """A slimmed, slice-sparse model run by the fastest measured engine per input shape (inference only)."""

    def __init__(self, model: nn.Module, example_input: Tensor | None = None,
                 engines: Sequence[str] = ENGINES):
        super().__init__()
        unknown = set(engines) - set(ENGINES)
        if unknown or "torchscript" not in engines:
            raise EngineError(f"engines must include 'torchscript' and come from {', '.join(ENGINES)}; "
                              f"got {', '.join(engines)}")
        self.allowed = tuple(engines)
        self.dense = slim(model, example_input=example_input).requires_grad_(False)
        example = example_input if example_input is not None else default_input(self.dense)
        self.slimmed = with_kernels(copy.deepcopy(self.dense), example)
        for name in ("pretrained_cfg", "default_cfg"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        self._engines: dict[tuple[int, ...], tuple[str, Engine, dict[str, float]]] = {}
        self._onnx: bytes | None = None
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.slimmed(x)
        key = (*x.shape, torch.get_num_threads())
        chosen = self._engines.get(key)
        if chosen is None:
            with torch.no_grad():
                chosen = self._engines[key] = self._specialise(x)
            while len(self._engines) > MAX_SPECIALISATIONS:
                self._engines.pop(next(iter(self._engines)))
        return chosen[1](x)  # no autograd context: neither the input nor any engine's weights need gradients

    def _specialise(self, x: Tensor) -> tuple[str, Engine, dict[str, float]]:
        """Measure the layers' forms and the engines for ``x``'s shape; the fastest engine with equal outputs."""
        reference = self.dense(x)
        candidates = {name: engine for name, engine in self._candidates(x).items()
                      if outputs_agree(engine(x), reference, CHECK_RTOL)}
        if "torchscript" not in candidates:  # never expected: the traced graph disagrees with the model
            warnings.warn("SparseRuntime: the traced model's outputs differ from the slimmed model's; running the "
                          "slimmed model eagerly (please report this model)", stacklevel=3)
            return "pytorch", self.dense, {}
        if len(candidates) == 1:
            return "torchscript", candidates["torchscript"], {}
        calls = {name: lambda e=engine: e(x) for name, engine in candidates.items()}
        best, ms, _ = pick_fastest(calls, "torchscript", budget_ms=TIMING_BUDGET_MS, min_rounds=3,
                                   max_rounds=MAX_ROUNDS, warmup=2)  # a new session settles
        return best, candidates[best], ms

    def _candidates(self, x: Tensor) -> dict[str, Engine]:
        """Each allowed engine that can run this model, built for ``x``'s shape."""
        traced = self._traced(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notices: still supported
            candidates: dict[str, Engine] = {"torchscript": torch.jit.freeze(traced)}  # freezing copies the trace
            if "torchscript-mkldnn" in self.allowed:
                try:  # the pass rewrites the module it is given: a second frozen copy
                    candidates["torchscript-mkldnn"] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                except Exception:  # a graph the pass cannot take: not a candidate
                    pass
        if "onnxruntime" in self.allowed:
            engine = self._onnxruntime(x)
            if engine is not None:
                candidates["onnxruntime"] = engine
        return candidates

    def _traced(self, x: Tensor) -> Any:
        """The kernel form with each measured layer's form fixed for ``x``'s shape, traced (eval mode)."""
        layers = measured_layers(self.slimmed)
        with recorded_inputs(layers) as inputs:
            self.slimmed(x)  # measures each layer's form for this shape (cached per machine)
        fixed = copy.deepcopy(self.slimmed).eval()
        for name, layer in fixed.named_modules():
            if isinstance(layer, MeasuredLayer) and layer.form == "auto" and name in inputs:
                layer.form = layers[name].chosen_form(*inputs[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice: still supported
            return torch.jit.trace(fixed, x, check_trace=False).eval()

    def _onnxruntime(self, x: Tensor) -> Engine | None:
        """onnxruntime on the dense slimmed model, ``None`` where it is not installed or cannot take the model."""
        from lilnetx.onnx_export import session, to_onnx

        try:
            if self._onnx is None:
                self._onnx = to_onnx(self.dense, tuple(x.shape[1:]))
            run = session(self._onnx, torch.get_num_threads()).run
        except Exception:  # not installed, or an operator the exporter cannot write
            return None
        return lambda t: torch.from_numpy(run(None, {"input": t.contiguous().numpy()})[0])

    def forms(self) -> dict[str, dict[str, str]]:
        """Per measured layer (convolution, linear, max pooling), the form it runs per input configuration
        ``"NxC[xHxW]/threads/isa"``."""
        return {name: {config: d["form"] for config, d in layer.decisions.items()}
                for name, layer in measured_layers(self.slimmed).items()}

    def engines(self) -> dict[str, dict[str, Any]]:
        """Per input shape ``"NxCxHxW/threads"``: the engine chosen, each candidate's measured milliseconds, and the
        shape's ``batch`` and ``threads``."""
        return {f"{'x'.join(map(str, key[:-1]))}/{key[-1]}": {"engine": name, "ms": ms, "batch": key[0],
                                                              "threads": key[-1]}
                for key, (name, _, ms) in self._engines.items()}


def compile_sparse(model: nn.Module, example_input: Tensor | None = None,
                   engines: Sequence[str] = ENGINES) -> SparseRuntime:
    """``model`` (plain or reparameterised) as a :class:`SparseRuntime` choosing among ``engines``."""
    return SparseRuntime(model, example_input, engines)
