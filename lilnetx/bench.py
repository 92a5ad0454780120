"""``benchmark(model, input_size)``: dense vs slimmed vs slice-sparse vs onnxruntime latency, in one process.

Variants are timed interleaved (one call of each per round) so that a noisy machine slows them alike, and
every speedup is a ratio against dense measured in the same rounds.

- ``dense``: the model as given (PyTorch, NCHW);
- ``slim``: ``lilnetx.slim(model)`` (BatchNorm folded, zero channels removed);
- ``sparse``: the LilNetX path, ``lilnetx.runtime.compile_sparse(model)`` (what ``zoo.load(name, slim=True)``
  returns): the slimmed model, each convolution, linear layer and max pooling running whichever of the kernel and
  PyTorch's op measured faster on this machine for the batch and thread count timed (measured in the
  warm-up rounds, cached per machine), ReLU and residual additions fused, run per shape by the engine that
  measured fastest (frozen TorchScript, the same with oneDNN layouts, or onnxruntime on the dense slimmed model);
- ``onnxruntime``: the slimmed model exported to ONNX and run by onnxruntime (the dense-runtime reference).

``result["layers"]`` says what ran: for every convolution and linear layer of the dense model, its share of zeros
and, per batch and thread count, the form the sparse variant used (``sparse``; ``sparse-serial``, the kernel on
the calling thread alone; ``dense``; or ``removed`` by slimming) with the speed-up it measured over PyTorch's op;
``result["engines"]`` the engine the sparse variant chose per batch and thread count.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lilnetx.calibration import interleaved_runs
from lilnetx.errors import LilnetxError
from lilnetx.metrics import stats
from lilnetx.reparam import is_reparameterized, strip
from lilnetx.slim import slim

VARIANTS = ("dense", "slim", "sparse", "onnxruntime")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
             "neon", "asimd")
Progress = Callable[[float, str], None]


class BenchmarkError(LilnetxError, ValueError):
    """Benchmark options that cannot be run (an unknown variant, no runs) or a model without an input size."""


def machine_info() -> dict[str, Any]:
    """CPU model, ISA flags, core count and library versions."""
    from lilnetx.native import cpu_flags, cpu_model

    cpu, flags = cpu_model(), cpu_flags()
    versions = {}
    for package in ("torch", "onnxruntime", "numpy", "timm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions}


def _summary(variant: str, batch: int, threads: int, latencies: list[float], dense_median: float | None
             ) -> dict[str, Any]:
    median = statistics.median(latencies)
    return {"variant": variant, "batch": batch, "threads": threads, "median_ms": median,
            "p90_ms": float(np.percentile(latencies, 90)), "latencies_ms": latencies,
            "throughput_per_s": batch / (median / 1e3),
            "speedup_vs_dense": dense_median / median if dense_median else None}


def _build(model: nn.Module, input_size: tuple[int, ...], variants: Sequence[str], report: Progress
           ) -> tuple[dict[str, Any], dict[str, str]]:
    """Callables ``f(x: Tensor)`` per variant (onnxruntime: its model bytes), and skipped variants' reasons."""
    built: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    example = torch.zeros(1, *input_size)
    slimmed = slim(model, example_input=example) if {"slim", "onnxruntime"} & set(variants) else None
    for variant in variants:
        if variant == "dense":
            built[variant] = model
        elif variant == "slim":
            built[variant] = slimmed
        elif variant == "sparse":
            from lilnetx.kernels import kernel_built, load_extension

            if not kernel_built():
                report(0.0, "compiling the sparse kernel for this CPU (first use, about a minute)")
            if load_extension() is None:
                skipped[variant] = "the sparse kernel could not be built (no C++ compiler?)"
                continue
            from lilnetx.runtime import compile_sparse

            built[variant] = compile_sparse(model, example)
        elif variant == "onnxruntime":
            try:
                from lilnetx.onnx_export import require_onnxruntime, to_onnx

                require_onnxruntime()
                built[variant] = to_onnx(slimmed, input_size)
            except Exception as exc:  # not installed, or an op the exporter cannot write
                skipped[variant] = f"{type(exc).__name__}: {exc}"
        else:
            raise BenchmarkError(f"unknown benchmark variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return built, skipped


@torch.no_grad()
def benchmark(model: nn.Module, input_size: tuple[int, ...], *, batch_sizes: Sequence[int] = (1,),
              threads: Sequence[int] = (1,), warmup: int = 3, runs: int = 10,
              variants: Sequence[str] = VARIANTS, progress: Progress | None = None) -> dict[str, Any]:
    """Latency of each variant of ``model`` at each batch size and thread count (fp32, CPU).

    Returns ``{"machine", "input_size", "macs_dense", "macs_sparse", "mac_reduction", "results": [{"variant",
    "batch", "threads", "median_ms", "p90_ms", "latencies_ms", "throughput_per_s", "speedup_vs_dense"}],
    "skipped": {variant: reason}, "layers", "engines"}`` (see the module doc). MACs are per image; ``mac_reduction`` (dense / with zero slices skipped)
    is the ideal speedup. ``speedup_vs_dense`` is ``None`` when dense is not among the variants.
    """
    if warmup < 0 or runs < 1 or not batch_sizes or not threads:
        raise BenchmarkError("benchmark needs runs >= 1, warmup >= 0 and at least one batch size and thread count")
    report = progress or (lambda fraction, message: None)
    input_size = tuple(int(v) for v in input_size)
    model = (strip(copy.deepcopy(model)) if is_reparameterized(model) else model).eval()
    report(0.0, "building variants")
    built, skipped = _build(model, input_size, variants, report)
    counts = stats(model, input_size)
    previous_threads = torch.get_num_threads()
    results: list[dict[str, Any]] = []
    configs = [(b, t) for b in batch_sizes for t in threads]
    try:
        for k, (batch, n_threads) in enumerate(configs):
            report(0.05 + 0.95 * k / len(configs), f"batch {batch}, {n_threads} thread(s)")
            torch.set_num_threads(n_threads)
            x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))
            calls = _calls(built, x, n_threads)
            latencies = interleaved_runs(calls, rounds=runs,  # sparse measures its forms in the warm-up
                                         warmup=max(1, warmup) if "sparse" in calls else warmup)
            dense = statistics.median(latencies["dense"]) if "dense" in latencies else None
            results += [_summary(name, batch, n_threads, lat, dense) for name, lat in latencies.items()]
    finally:
        torch.set_num_threads(previous_threads)
    report(1.0, "done")
    dense_macs, sparse_macs = counts["macs_dense"], counts["macs_sparse"]
    return {"machine": {**machine_info(), "threads": list(threads)}, "input_size": list(input_size),
            "macs_dense": dense_macs, "macs_sparse": sparse_macs,
            "mac_reduction": dense_macs / sparse_macs if sparse_macs else None,
            "results": results, "skipped": skipped,
            "layers": layer_forms(model, built.get("sparse"), {f"b{b}/t{t}" for b, t in configs}),
            "engines": engines_run(built.get("sparse"))}


def engines_run(sparse: Any) -> dict[str, dict[str, Any]]:
    """Per setting ``"b{batch}/t{threads}"`` the sparse variant (a ``SparseRuntime``) ran: the engine it chose and
    each candidate engine's milliseconds as it measured them (fastest of its rounds)."""
    if sparse is None:
        return {}
    return {_setting(chosen): {"engine": chosen["engine"], "ms": chosen["ms"]} for chosen in sparse.engines().values()}


def _setting(decision: dict[str, Any]) -> str:
    """``"b{batch}/t{threads}"`` of a layer's or the runtime's decision."""
    return f"b{decision['batch']}/t{decision['threads']}"


def layer_forms(dense: nn.Module, sparse: Any, settings: set[str]) -> list[dict[str, Any]]:
    """Per convolution and linear layer of ``dense``: its share of zeros (``zero_slice_share`` of K×K slices for a
    convolution, ``zero_weight_share`` for a linear layer) and, per setting ``"b{batch}/t{threads}"`` of
    ``settings`` the sparse variant (a ``SparseRuntime``) ran, the form used and the kernel's measured speed-up
    over PyTorch's op."""
    from lilnetx.measured import MeasuredLayer

    if sparse is None:
        return []
    kept = dict(sparse.slimmed.named_modules())
    rows = []
    for name, layer in dense.named_modules():
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            continue
        nonzero = layer.weight.detach().ne(0)
        row: dict[str, Any] = {"name": name, "forms": {}}
        if isinstance(layer, nn.Conv2d):
            row.update(kernel="x".join(map(str, layer.kernel_size)),
                       zero_slice_share=float(1 - nonzero.flatten(2).any(2).float().mean()))
        else:
            row.update(kernel="fc", zero_slice_share=None, zero_weight_share=float(1 - nonzero.float().mean()))
        runs = kept.get(name)
        if not isinstance(runs, nn.Conv2d | nn.Linear | MeasuredLayer):
            row["forms"] = {"all": {"form": "removed"}}
        elif not isinstance(runs, MeasuredLayer):
            row["forms"] = {"all": {"form": "dense"}}  # a layer the kernels do not take (reflect padding, float64)
        else:
            for decision in runs.decisions.values():
                if _setting(decision) in settings:
                    row["forms"][_setting(decision)] = {"form": decision["form"], "speedup": runs.speedup(decision)}
        rows.append(row)
    return rows


def _calls(built: dict[str, Any], x: torch.Tensor, threads: int) -> dict[str, Callable[[], Any]]:
    calls: dict[str, Callable[[], Any]] = {}
    for name, target in built.items():
        if name == "onnxruntime":
            from lilnetx.onnx_export import session

            sess, feed = session(target, threads), {"input": x.numpy()}
            calls[name] = lambda s=sess, f=feed: s.run(None, f)
        else:
            calls[name] = lambda m=target: m(x)
    return calls
