"""``MeasuredLayer``: a layer with a reference form (PyTorch's own op) and a kernel form, each input configuration
running the one that measured faster on this machine.

The first call with a new configuration (the input's shape without its channels, the thread count and a forced
kernel variant) times every form on that very input, interleaved, and keeps the fastest: a form other than the
reference only when it wins by ``MIN_GAIN``. Decisions are cached in memory and under ``$LILNETX_HOME``
(:mod:`lilnetx.calibration`), keyed by CPU model, instruction set, the kernels' build, torch version and the
layer's signature, so each layer is measured once per machine and kernel build. Subclasses say which forms exist,
which inputs the kernel takes and how each form runs.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lilnetx import calibration, kernels, native
from lilnetx.errors import LilnetxError
from lilnetx.kernels import ISA_ENV, kernel_isa

MIN_GAIN = 1.03  # a form must be this much faster than the reference, as measured, to be used
TIMING_BUDGET_MS = 60.0  # per decision, across all rounds
MEASURE_VERSION = 3  # part of every cached decision's key: a change in how decisions are measured re-measures


class LayerOptionError(LilnetxError, ValueError):
    """A measured layer was given an option it does not have (an unknown form or activation)."""


class MeasuredLayer(nn.Module):
    """Base of the layers that pick their form per input configuration by measuring (see the module docstring).

    ``form`` is ``"auto"`` (measure) or one of ``FORMS`` (forced, for benchmarks). ``decisions`` maps each
    configuration ``"N[xHxW]/threads/isa"`` to what was measured: ``form``, ``<form>_ms`` per form, ``decided_by``.
    """

    OP: ClassVar[str]  # the cache's name for this kind of layer
    FORMS: ClassVar[tuple[str, ...]]  # the reference form first
    KERNEL_FORM: ClassVar[str]  # the form the compiled kernel runs

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
        """Whether the kernel form can run on these inputs (float32 on the CPU, no gradients, built here)."""
        raise NotImplementedError

    def signature(self) -> list[Any]:
        """What, besides the input configuration, makes this layer's timing: shapes, options, non-zero pattern."""
        raise NotImplementedError

    def forward(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        form = self.form
        if form == "auto" and self.kernel_takes(x, *rest):
            form = self._fast.get((x.shape, torch.get_num_threads())) or self.decide(x)["form"]
        if form == self.KERNEL_FORM and not self.kernel_takes(x, *rest):
            form = self.FORMS[0]
        return self.run(form, x, *rest)

    def decide(self, x: Tensor) -> dict[str, Any]:
        """The form for ``x``'s configuration: remembered, else from the machine's cache, else measured now."""
        spatial = "x".join(str(d) for d in (x.shape[0], *x.shape[2:]))
        config = f"{spatial}/{torch.get_num_threads()}/{os.environ.get(ISA_ENV, '')}"
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
            self.decisions[config] = decision
        self._fast[(x.shape, torch.get_num_threads())] = decision["form"]
        return decision

    @torch.no_grad()
    def measure(self, x: Tensor) -> dict[str, Any]:
        """Time every form on ``x``, interleaved; the chosen form and each form's time (the fastest of its rounds:
        a decision is cached, so it must not follow a moment's load on the machine)."""
        calls = {form: lambda form=form: self.run(form, x) for form in self.FORMS}
        first = calibration.interleaved_ms(calls, rounds=1)
        rounds = int(min(25, max(5, TIMING_BUDGET_MS / max(1e-3, sum(first.values())))))
        ms = calibration.interleaved_ms(calls, rounds=rounds, warmup=0, statistic=min)
        reference = self.FORMS[0]
        fastest = min(ms, key=ms.__getitem__)
        form = fastest if ms[fastest] * MIN_GAIN <= ms[reference] else reference
        return {"form": form, **{f"{name}_ms": value for name, value in ms.items()}, "rounds": rounds,
                "decided_by": "measured"}

    def speedup(self, decision: dict[str, Any]) -> float | None:
        """How much faster the kernel measured than the reference in ``decision``."""
        kernel_ms = decision.get(f"{self.KERNEL_FORM}_ms")
        return decision[f"{self.FORMS[0]}_ms"] / kernel_ms if kernel_ms else None


def measured_layers(model: nn.Module) -> dict[str, MeasuredLayer]:
    """Every :class:`MeasuredLayer` in ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MeasuredLayer)}
