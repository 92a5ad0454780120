"""Slice-sparse inference speed on this CPU: synthetic 3x3 layers and the zoo's models, fp32.

Synthetic layers (64->64 at 32x32, 128->128 at 16x16; 50 / 80 / 90 / 95 % zero K×K slices; batch 1 and 64; 1 and
2 threads): dense ``conv2d`` in NCHW (what a PyTorch model runs) and in channels-last (the fastest dense layout),
the sparse kernel, and "chosen": a ``SparseConv2d`` in its default ``auto`` form, which runs whichever of the
kernel and dense NCHW it measured faster for that configuration (the measurement happens before the timed
rounds). All are timed interleaved, one call each per round; every speedup is a ratio of medians from the same
rounds. The MAC reduction (dense / non-zero taps) is the ideal.

Zoo models: every ``zoo_artifacts/*.lnx``, through ``lilnetx.bench.benchmark`` (dense, slim,
sparse = the LilNetX path ``zoo.load(slim=True)`` returns, onnxruntime on the dense slimmed model), 1 thread,
batch 1 and 32.

Targets (issue 24): chosen >= 0.97x dense in every cell; at 80 % the kernel >= 2x dense NCHW and >= 1.6x
channels-last; at 95 % >= 5x and >= 4x; zoo models: sparse >= 1.5x dense and >= 1.0x onnxruntime.
Writes ``benchmarks/results/sparse_speed.json`` (with the CPU model and ISA) and prints Markdown tables.

    .venv/bin/python benchmarks/sparse_speed.py [--runs 9] [--quick] [--table]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
from lilnetx.bench import benchmark, machine_info
from lilnetx.calibration import interleaved_ms
from lilnetx.kernels import kernel_isa, load_extension
from lilnetx.sparse_conv import SparseConv2d

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sparse_speed.json"
LAYERS = ((64, 32), (128, 16))  # (channels, map size)
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
BATCHES = (1, 64)
THREADS = (1, 2)
KERNEL_TARGETS = {0.8: (2.0, 1.6), 0.95: (5.0, 4.0)}  # sparsity -> (vs NCHW, vs channels-last)
CHOSEN_TARGET = 0.97
ZOO_BATCHES, ZOO_THREADS = (1, 32), (1,)


def _layer(channels: int, sparsity: float, seed: int) -> nn.Conv2d:
    """A 3x3 conv with exactly ``sparsity`` of its K×K slices zero (random positions)."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    slices = channels * channels
    zero = torch.randperm(slices, generator=g)[: round(sparsity * slices)]
    with torch.no_grad():
        conv.weight.normal_(generator=g)
        conv.weight.view(slices, 9)[zero] = 0
    return conv.eval()


@torch.no_grad()
def synthetic(runs: int) -> list[dict[str, Any]]:
    rows = []
    for channels, size in LAYERS:
        for sparsity in SPARSITIES:
            conv = _layer(channels, sparsity, seed=channels + int(100 * sparsity))
            kernel, chosen = SparseConv2d(conv, form="sparse"), SparseConv2d(conv)
            w_cl = conv.weight.contiguous(memory_format=torch.channels_last)
            for batch in BATCHES:
                x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
                x_cl = x.contiguous(memory_format=torch.channels_last)
                assert torch.allclose(kernel(x), conv(x), atol=1e-4)
                for threads in THREADS:
                    torch.set_num_threads(threads)
                    decision = chosen.decide(x)
                    calls = {"dense": lambda x=x, f=conv: f(x),
                             "dense_cl": lambda x=x_cl, w=w_cl: F.conv2d(x, w, None, 1, 1),
                             "sparse": lambda x=x, f=kernel: f(x), "chosen": lambda x=x, f=chosen: f(x)}
                    ms = interleaved_ms(calls, rounds=runs if batch > 1 else 5 * runs, warmup=2)
                    row = {"channels": channels, "size": size, "sparsity": sparsity, "batch": batch,
                           "threads": threads, "mac_reduction": 1 / kernel.density, "ms": ms,
                           "chosen": decision["form"],
                           "speedup_vs_nchw": ms["dense"] / ms["sparse"],
                           "speedup_vs_channels_last": ms["dense_cl"] / ms["sparse"],
                           "chosen_vs_nchw": ms["dense"] / ms["chosen"]}
                    rows.append(row)
                    print(f"{channels}->{channels} {size}x{size} {sparsity:.0%} b{batch} t{threads}: dense "
                          f"{ms['dense']:.2f} ms, channels-last {ms['dense_cl']:.2f}, kernel {ms['sparse']:.2f} "
                          f"({row['speedup_vs_nchw']:.2f}x; {row['speedup_vs_channels_last']:.2f}x vs channels-last), "
                          f"chosen {row['chosen']} {row['chosen_vs_nchw']:.2f}x", flush=True)
    return rows


def zoo_models(runs: int) -> list[dict[str, Any]]:
    results = []
    for path in sorted((ROOT / "zoo_artifacts").glob("*.lnx")):
        model = lilnetx.load(path)
        result = benchmark(model, tuple(model.pretrained_cfg["input_size"]), batch_sizes=ZOO_BATCHES,
                           threads=ZOO_THREADS, warmup=3, runs=runs * 3)
        result["name"] = path.stem.replace("%2F", "/")
        for r in result["results"]:
            r.pop("latencies_ms")
            print(f"{result['name']} {r['variant']} b{r['batch']} t{r['threads']}: {r['median_ms']:.3f} ms "
                  f"({r['speedup_vs_dense']:.2f}x; ideal {result['mac_reduction']:.2f}x)", flush=True)
        results.append(result)
    return results


def targets(rows: list[dict[str, Any]], models: list[dict[str, Any]]) -> dict[str, Any]:
    """Which cells miss which target, with the measured figures."""
    def brief(r: dict[str, Any]) -> str:
        return (f"{r['channels']}ch {r['size']}px {r['sparsity']:.0%} b{r['batch']} t{r['threads']}: kernel "
                f"{r['speedup_vs_nchw']:.2f}x NCHW / {r['speedup_vs_channels_last']:.2f}x channels-last, "
                f"chosen {r['chosen_vs_nchw']:.2f}x")

    kernel_missed = [brief(r) for r in rows if r["sparsity"] in KERNEL_TARGETS
                     and (r["speedup_vs_nchw"] < KERNEL_TARGETS[r["sparsity"]][0]
                          or r["speedup_vs_channels_last"] < KERNEL_TARGETS[r["sparsity"]][1])]
    zoo_missed = []
    for m in models:
        res = {(r["batch"], r["threads"], r["variant"]): r for r in m["results"]}
        for (batch, threads, variant), r in res.items():
            ort = res.get((batch, threads, "onnxruntime"))
            if variant != "sparse":
                continue
            vs_ort = ort["median_ms"] / r["median_ms"] if ort else None
            if r["speedup_vs_dense"] < 1.5 or (vs_ort is not None and vs_ort < 1.0):
                zoo_missed.append(f"{m['name']} b{batch} t{threads}: {r['speedup_vs_dense']:.2f}x dense, "
                                  + (f"{vs_ort:.2f}x onnxruntime" if vs_ort else "no onnxruntime"))
    return {"chosen_below_target": [brief(r) for r in rows if r["chosen_vs_nchw"] < CHOSEN_TARGET],
            "kernel_missed": kernel_missed, "zoo_missed": zoo_missed, "cells": len(rows)}


def markdown(result: dict[str, Any]) -> str:
    """The synthetic-layer and zoo-model tables of a stored result."""
    rows, models, m = result["synthetic"], result["zoo_models"], result["machine"]
    lines = [f"CPU: {m['cpu']} ({', '.join(m['isa'])}); kernel variant {result['kernel_isa']}; "
             f"torch {m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}.", ""]
    cells = [(b, t) for t in THREADS for b in BATCHES]
    head = " | ".join(f"b{b} t{t}" for b, t in cells)
    lines += [f"| layer | zero slices | ideal | kernel vs dense NCHW: {head} | kernel vs channels-last: {head} | "
              f"chosen (worst cell) | GMAC/s b64 t1: kernel (useful) / dense NCHW |",
              "|---|---:|---:|" + "---:|" * (2 * len(cells) + 2)]
    by = {(r["channels"], r["sparsity"], r["batch"], r["threads"]): r for r in rows}
    for channels, size in LAYERS:
        for sparsity in SPARSITIES:
            cell = [by.get((channels, sparsity, b, t)) for b, t in cells]
            if None in cell:
                continue
            worst = min(cell, key=lambda c: c["chosen_vs_nchw"])
            lines.append(f"| {channels}→{channels} {size}×{size} | {sparsity:.0%} | {cell[0]['mac_reduction']:.0f}× | "
                         + " | ".join(f"{c['speedup_vs_nchw']:.2f}×" for c in cell) + " | "
                         + " | ".join(f"{c['speedup_vs_channels_last']:.2f}×" for c in cell)
                         + f" | {worst['chosen_vs_nchw']:.2f}× ({worst['chosen']}) | {_gmacs(by, channels, size, sparsity)} |")
    lines += ["", "| zoo model | ideal | batch | dense ms | slim | sparse | onnxruntime | sparse vs onnxruntime | "
              "engine chosen | kernels alone vs onnxruntime |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for model in models:
        res = {(r["batch"], r["variant"]): r for r in model["results"] if r["threads"] == 1}
        for batch in ZOO_BATCHES:
            got = [res.get((batch, v)) for v in ("slim", "sparse", "onnxruntime")]
            vs_ort = got[2]["median_ms"] / got[1]["median_ms"] if got[1] and got[2] else None
            lines.append(f"| `{model['name']}` | {model['mac_reduction']:.2f}× | {batch} | "
                         f"{res[(batch, 'dense')]['median_ms']:.3f} | "
                         + " | ".join(f"{c['speedup_vs_dense']:.2f}×" if c else "–" for c in got)
                         + f" | {f'{vs_ort:.2f}×' if vs_ort else '–'} | {_engine(model, batch)} |")
    return "\n".join(lines)


def _gmacs(by: dict[tuple, dict[str, Any]], channels: int, size: int, sparsity: float) -> str:
    """Multiply-adds per second at batch 64, 1 thread: the kernel's over its non-zero taps only, and dense NCHW's
    (how close each runs to the core's peak: a kernel near dense's rate is bound by arithmetic, not by loads)."""
    r = by.get((channels, sparsity, 64, 1))
    if r is None:
        return "–"
    dense = 64 * channels * channels * 9 * size * size
    return f"{dense / r['mac_reduction'] / r['ms']['sparse'] / 1e6:.0f} / {dense / r['ms']['dense'] / 1e6:.0f}"


def _stored_synthetic() -> list[dict[str, Any]]:
    """The synthetic rows of the stored result when it was measured on this CPU (``--quick`` keeps them)."""
    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    return stored.get("synthetic", []) if stored.get("machine", {}).get("cpu") == machine_info()["cpu"] else []


def _engine(model: dict[str, Any], batch: int) -> str:
    """The engine the sparse variant chose, and how the kernels alone (the faster TorchScript engine) compared with
    onnxruntime in the same measurement."""
    chosen = (model.get("engines") or {}).get(f"b{batch}/t1")
    if not chosen:
        return "– | –"
    ms = chosen["ms"]
    kernels = min((ms[e] for e in ("torchscript", "torchscript-mkldnn") if e in ms), default=None)
    ratio = f"{ms['onnxruntime'] / kernels:.2f}×" if kernels and "onnxruntime" in ms else "–"
    return f"{chosen['engine']} | {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed rounds per batch-64 cell (batch 1: 5x)")
    parser.add_argument("--quick", action="store_true",
                        help="zoo models only (keeps the stored synthetic rows when they are from this CPU)")
    parser.add_argument("--table", action="store_true", help="print the tables of the stored results only")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(OUT.read_text())))
        return
    if load_extension() is None:
        raise SystemExit("the sparse kernel could not be built here (no C++ compiler?): nothing to measure")
    previous = torch.get_num_threads()
    start = time.time()
    try:
        rows = _stored_synthetic() if args.quick else synthetic(args.runs)
        models = zoo_models(args.runs)
    finally:
        torch.set_num_threads(previous)
    result = {"machine": machine_info(), "kernel_isa": kernel_isa().name, "runs": args.runs,
              "seconds": round(time.time() - start, 1), "synthetic": rows, "zoo_models": models}
    result["targets"] = targets(rows, models)
    OUT.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(markdown(result))
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
