"""``MeasuredLayer``: a layer with a reference form (PyTorch's own op) and a kernel form, each input configuration
running the one that measured faster on this machine.

The first call with a new configuration (the input's shape, the thread count and a forced kernel variant)
times every form on that very input, interleaved, and keeps the fastest: a form other than the
reference only when it wins by ``MIN_GAIN``. With several threads the kernel is timed twice, split over the
threads and on the calling thread alone (``SERIAL_FORM``): waking the other threads costs more than a small
layer's work on some machines. Decisions are cached in memory and under ``$LILNETX_HOME``
(:mod:`lilnetx.calibration`), keyed by CPU model, instruction set, the kernels' build, torch version and the
layer's signature, so each layer is measured once per machine and kernel build. Subclasses say which forms exist,
which inputs the kernel takes and how each form runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lilnetx import calibration, kernels, native
from lilnetx.errors import LilnetxError
from lilnetx.kernels import ISA_ENV, kernel_isa

MIN_GAIN = 1.03  # a form must be this much faster than the reference, as measured, to be used
TIMING_BUDGET_MS = 60.0  # per decision, across all rounds
MEASURE_VERSION = 5  # part of every cached decision's key: a change in how decisions are measured re-measures
Activation = Literal["relu", "relu6"] | None
KernelLayerForm = Literal["auto", "dense", "sparse", "sparse-serial"]  # what a convolution or linear layer runs
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}  # the kernels' activation codes
EMPTY = torch.empty(0)  # the kernels' "none" for an optional tensor


class LayerOptionError(LilnetxError, ValueError):
    """A measured layer was given an option it does not have (an unknown form or activation)."""


class MeasuredLayer(nn.Module):
    """Base of the layers that pick their form per input configuration by measuring (see the module docstring).

    ``form`` is ``"auto"`` (measure) or one of ``FORMS`` (forced, for benchmarks). ``decisions`` maps each
    configuration ``"NxC[xHxW]/threads/isa"`` to what was measured: ``form``, ``<form>_ms`` per form, ``decided_by``,
    and the configuration's ``batch`` and ``threads``.
    """

    OP: ClassVar[str]  # the cache's name for this kind of layer
    FORMS: ClassVar[tuple[str, ...]]  # the reference form first
    KERNEL_FORM: ClassVar[str]  # the form the compiled kernel runs, split over the threads
    SERIAL_FORM: ClassVar[str | None] = None  # the kernel on the calling thread alone: timed with several threads

    def __init__(self, form: str = "auto"):
        super().__init__()
        if form != "auto" and form not in self.FORMS:
            raise LayerOptionError(f"form must be 'auto' or one of {list(self.FORMS)}, not {form!r}")
        self.form = form
        self.decisions: dict[str, dict[str, Any]] = {}
        self._fast: dict[tuple[torch.Size, int], str] = {}  # (input shape, threads) -> form, for the hot path

    def run(self, form: str, x: Tensor, *rest: Tensor | None) -> Tensor:
        """``form`` applied to ``x`` (and a subclass's extra inputs)."""
        raise NotImplementedError

    def kernel_takes(self, x: Tensor, *rest: Tensor | None) -> bool:
        """Whether the kernel form can run on these inputs (float32 on the CPU, no gradients, built here); a
        subclass adds its own shape conditions to :meth:`kernel_tensor`'s."""
        raise NotImplementedError

    @staticmethod
    def kernel_tensor(t: Tensor, dim: int | None = None) -> bool:
        """``t`` is something the kernels take: float32 on the CPU, needing no gradient (and ``dim``-dimensional),
        with the kernels built here."""
        return (t.dtype is torch.float32 and t.is_cpu and (dim is None or t.dim() == dim)
                and not (t.requires_grad and torch.is_grad_enabled()) and kernels.extension() is not None)

    def signature(self) -> list[Any]:
        """What, besides the input configuration, makes this layer's timing: shapes, options, non-zero pattern."""
        raise NotImplementedError

    def forward(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        return self.run(self.chosen_form(x, *rest), x, *rest)

    def chosen_form(self, x: Tensor, *rest: Tensor | None) -> str:
        """The form these inputs run: the forced one, else the measured one (measured now for a new
        configuration); the reference wherever the kernel does not take them."""
        if not self.kernel_takes(x, *rest):
            return self.FORMS[0]
        if self.form != "auto":
            return self.form
        return self._fast.get((x.shape, torch.get_num_threads(), os.environ.get(ISA_ENV, ""))) or self.decide(x)["form"]

    def decide(self, x: Tensor) -> dict[str, Any]:
        """The form for ``x``'s configuration (its shape, the thread count and a forced kernel variant):
        remembered, else from the machine's cache, else measured now."""
        isa = os.environ.get(ISA_ENV, "")
        config = f"{'x'.join(str(d) for d in x.shape)}/{torch.get_num_threads()}/{isa}"
        decision = self.decisions.get(config)
        if decision is None:
            name = calibration.key(self.OP, MEASURE_VERSION, native.cpu_model(), kernel_isa().name,
                                   kernels.build_name(), torch.__version__, config, self.signature())
            store = calibration.cache()
            cached = store.get(name)
            if cached is not None and cached.get("form") in self.FORMS:
                decision = {**cached, "decided_by": "cache"}
            else:
                decision = self.measure(x.contiguous())
                store.put(name, {k: v for k, v in decision.items() if k != "decided_by"})
            self.decisions[config] = decision = {**decision, "batch": int(x.shape[0]),
                                                 "threads": torch.get_num_threads()}
        self._fast[(x.shape, torch.get_num_threads(), isa)] = decision["form"]
        return decision

    @torch.no_grad()
    def measure(self, x: Tensor) -> dict[str, Any]:
        """Time every form on ``x``, interleaved; the chosen form and each form's time (the fastest of its rounds:
        a decision is cached, so it must not follow a moment's load on the machine)."""
        forms = [f for f in self.FORMS if f != self.SERIAL_FORM or torch.get_num_threads() > 1]
        calls = {form: lambda form=form: self.run(form, x) for form in forms}
        form, ms, rounds = calibration.pick_fastest(calls, self.FORMS[0], budget_ms=TIMING_BUDGET_MS, min_rounds=5,
                                                    max_rounds=25, min_gain=MIN_GAIN)
        return {"form": form, **{f"{name}_ms": value for name, value in ms.items()}, "rounds": rounds,
                "decided_by": "measured"}

    def speedup(self, decision: dict[str, Any]) -> float | None:
        """How much faster the kernel (its faster form) measured than the reference in ``decision``."""
        kernel_ms = [decision[f"{form}_ms"] for form in self.FORMS[1:] if decision.get(f"{form}_ms")]
        return decision[f"{self.FORMS[0]}_ms"] / min(kernel_ms) if kernel_ms else None



class WeightedLayer(MeasuredLayer):
    """A measured layer standing in for a dense ``Conv2d`` / ``Linear``: a float32 copy of its weight and bias (the
    reference form's), the activation fused into the output, and what the weight's zeros make of it (``density``
    and ``pattern``, part of the layer's signature). Its forms: PyTorch's dense op, the kernel split over the
    threads, and the kernel on the calling thread alone."""

    FORMS = ("dense", "sparse", "sparse-serial")
    KERNEL_FORM, SERIAL_FORM = "sparse", "sparse-serial"

    def __init__(self, layer: nn.Module, form: str, activation: Activation):
        check_activation(activation)
        super().__init__(form)
        self.activation = activation
        weight = layer.weight.detach().float()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", layer.bias.detach().float().clone() if layer.bias is not None else None)
        nonzero = weight.ne(0)
        self.nonzeros = int(nonzero.sum())
        self.pattern = hashlib.sha256(nonzero.numpy().tobytes()).hexdigest()[:16]

    @property
    def density(self) -> float:
        """Fraction of the weights that are non-zero."""
        return self.nonzeros / max(1, self.weight.numel())

    def activation_repr(self) -> str:
        """``extra_repr``'s tail: the fused activation, if any."""
        return f", activation={self.activation}" if self.activation else ""


def measured_layers(model: nn.Module) -> dict[str, MeasuredLayer]:
    """Every :class:`MeasuredLayer` in ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MeasuredLayer)}


@contextmanager
def recorded_inputs(layers: dict[str, nn.Module]) -> Iterator[dict[str, tuple[Any, ...]]]:
    """Within the block, the first positional inputs each of ``layers`` is called with, by name."""
    inputs: dict[str, tuple[Any, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: inputs.setdefault(n, args))
             for name, m in layers.items()]
    try:
        yield inputs
    finally:
        for hook in hooks:
            hook.remove()


def check_activation(activation: object) -> None:
    """Raise :class:`LayerOptionError` unless ``activation`` is one the kernels fuse."""
    if activation not in ACTIVATIONS:
        raise LayerOptionError(f"activation must be one of {list(ACTIVATIONS)}, not {activation!r}")


def activate(out: Tensor, activation: Activation) -> Tensor:
    """``out`` through the fused activation (what the kernels do in their store)."""
    if activation == "relu":
        return F.relu(out)
    return F.relu6(out) if activation == "relu6" else out
