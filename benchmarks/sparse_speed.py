"""Slice-sparse inference speed: synthetic 3x3 conv layers and the convolutional zoo models, fp32 on this CPU.

Synthetic layers (64->64 at 32x32, 128->128 at 16x16; 50 / 80 / 90 / 95 % zero K×K slices; batch 1 and 64;
1 and 2 threads): dense ``conv2d`` in NCHW (what a PyTorch model runs by default) and in channels-last (the
fastest dense layout), the sparse kernel and its per-tap loop (the kernel without the 3x3 slice path; with
``F.unfold`` alone, im2col's first step, in the batch-64 one-thread cells at 50 %), timed interleaved, one call each per round; every speedup is a
ratio of medians from the same rounds. "chosen" is the per-layer choice ``sparsify`` makes (the sparse kernel
where the cost model predicts a win, else the very same dense call: 1x by construction). The MAC reduction
(dense / non-zero taps) is the ideal.

Zoo models: every ``zoo_artifacts/*.lnx`` with a convolution, through ``lilnetx.bench.benchmark`` (dense vs
slim vs slim + sparse vs onnxruntime on the slimmed model).

Targets (issue 11): speedup >= half the MAC reduction; >= 2x at 80 %, >= 4x at 95 %; the chosen form never
below 1x. Writes ``benchmarks/results/sparse_speed.json`` and prints Markdown tables.

    .venv/bin/python benchmarks/sparse_speed.py [--runs 9] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
from lilnetx.bench import benchmark, machine_info
from lilnetx.sparse_conv import SparseConv2d, load_extension, modelled_faster

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sparse_speed.json"
LAYERS = ((64, 32), (128, 16))  # (channels, map size)
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
BATCHES = (1, 64)
THREADS = (1, 2)
TARGETS = {0.8: 2.0, 0.95: 4.0}


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


def _interleaved(calls: dict[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def synthetic(runs: int) -> list[dict[str, Any]]:
    rows = []
    for channels, size in LAYERS:
        for sparsity in SPARSITIES:
            conv = _layer(channels, sparsity, seed=channels + int(100 * sparsity))
            sparse = SparseConv2d(conv)
            chosen = sparse if modelled_faster(conv, (size, size)) else conv
            w_cl = conv.weight.contiguous(memory_format=torch.channels_last)
            for batch in BATCHES:
                x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
                x_cl = x.contiguous(memory_format=torch.channels_last)
                assert torch.allclose(sparse(x), conv(x), atol=1e-4)
                for threads in THREADS:
                    torch.set_num_threads(threads)
                    calls = {"dense": lambda c=conv, x=x: c(x),
                             "dense_cl": lambda x=x_cl, w=w_cl: F.conv2d(x, w, None, 1, 1),
                             "sparse": lambda s=sparse, x=x: s(x),
                             "sparse_per_tap": lambda s=sparse, x=x: s(x, slices=False)}
                    if batch > 1 and threads == 1 and sparsity == SPARSITIES[0]:
                        calls["unfold_only"] = lambda x=x: F.unfold(x, 3, padding=1)  # im2col alone
                    ms = _interleaved(calls, warmup=2, runs=runs if batch > 1 else 5 * runs)
                    ms["chosen"] = ms["sparse"] if chosen is sparse else ms["dense"]  # dense: the same call
                    row = {"channels": channels, "size": size, "sparsity": sparsity, "batch": batch,
                           "threads": threads, "mac_reduction": 1 / sparse.density, "ms": ms,
                           "chosen": "sparse" if chosen is sparse else "dense",
                           "speedup_vs_nchw": ms["dense"] / ms["sparse"],
                           "speedup_vs_channels_last": ms["dense_cl"] / ms["sparse"],
                           "per_tap_speedup_vs_nchw": ms["dense"] / ms["sparse_per_tap"],
                           "chosen_vs_nchw": ms["dense"] / ms["chosen"]}
                    rows.append(row)
                    print(f"{channels}->{channels} {size}x{size} {sparsity:.0%} b{batch} t{threads}: "
                          f"dense {ms['dense']:.2f} ms, channels-last {ms['dense_cl']:.2f}, sparse "
                          f"{ms['sparse']:.2f} ({row['speedup_vs_nchw']:.2f}x; {row['speedup_vs_channels_last']:.2f}x "
                          f"vs channels-last), per-tap loop {row['per_tap_speedup_vs_nchw']:.2f}x, chosen "
                          f"{row['chosen']} {row['chosen_vs_nchw']:.2f}x"
                          + (f", F.unfold alone {ms['unfold_only']:.1f} ms" if "unfold_only" in ms else ""),
                          flush=True)
    return rows


def zoo_models(runs: int) -> list[dict[str, Any]]:
    results = []
    for path in sorted((ROOT / "zoo_artifacts").glob("*.lnx")):
        model = lilnetx.load(path)
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            continue
        result = benchmark(model, tuple(model.pretrained_cfg["input_size"]), batch_sizes=BATCHES, threads=THREADS,
                           warmup=3, runs=runs * 2)
        result["name"] = path.stem
        for r in result["results"]:
            r.pop("latencies_ms")
            print(f"{path.stem} {r['variant']} b{r['batch']} t{r['threads']}: {r['median_ms']:.3f} ms "
                  f"({r['speedup_vs_dense']:.2f}x; ideal {result['mac_reduction']:.2f}x)", flush=True)
        results.append(result)
    return results


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which rows miss which target, with the measured figures."""
    half = [r for r in rows if r["speedup_vs_nchw"] < r["mac_reduction"] / 2]
    absolute = [r for r in rows if r["sparsity"] in TARGETS and r["speedup_vs_nchw"] < TARGETS[r["sparsity"]]]
    below_one = [r for r in rows if r["chosen_vs_nchw"] < 1]

    def brief(r: dict[str, Any]) -> str:
        return (f"{r['channels']}ch {r['size']}px {r['sparsity']:.0%} b{r['batch']} t{r['threads']}: "
                f"{r['speedup_vs_nchw']:.2f}x (chosen {r['chosen_vs_nchw']:.2f}x)")

    return {"half_mac_reduction_missed": [brief(r) for r in half],
            "absolute_missed": [brief(r) for r in absolute],
            "chosen_below_1x": [brief(r) for r in below_one],
            "cells": len(rows)}


def markdown(rows: list[dict[str, Any]], models: list[dict[str, Any]]) -> str:
    """Speedups of the sparse kernel over dense NCHW (and over channels-last) per layer, batch and threads."""
    cells = [(b, t) for t in THREADS for b in BATCHES]
    head = " | ".join(f"b{b} t{t}" for b, t in cells)
    lines = [f"| layer | slice sparsity | ideal | {head} | b64 t1 vs channels-last | b64 t1 per-tap loop | "
             "dense b64 t1 ms |", "|---|---:|---:|" + "---:|" * (len(cells) + 3)]
    by = {(r["channels"], r["sparsity"], r["batch"], r["threads"]): r for r in rows}
    for channels, size in LAYERS:
        for sparsity in SPARSITIES:
            cell = [by.get((channels, sparsity, b, t)) for b, t in cells]
            if None in cell:
                continue
            ref = by[(channels, sparsity, 64, 1)]
            lines.append(f"| {channels}→{channels} {size}×{size} | {sparsity:.0%} | {ref['mac_reduction']:.0f}× | "
                         + " | ".join(f"{c['speedup_vs_nchw']:.2f}×" + ("" if c["chosen"] == "sparse" else " (dense)")
                                      for c in cell)
                         + f" | {ref['speedup_vs_channels_last']:.2f}× | {ref['per_tap_speedup_vs_nchw']:.2f}× | "
                         f"{ref['ms']['dense']:.1f} |")
    unfold = [r for r in rows if "unfold_only" in r["ms"]]
    lines += ["\nim2col alone (`F.unfold`, batch 64, 1 thread): " + "; ".join(
        f"{r['channels']}→{r['channels']} {r['size']}×{r['size']} {r['ms']['unfold_only']:.1f} ms against dense "
        f"conv2d {r['ms']['dense']:.1f} ms" for r in unfold)]
    lines += ["", "| zoo model | ideal | batch | threads | dense ms | slim | sparse | onnxruntime |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        res = {(r["batch"], r["threads"], r["variant"]): r for r in m["results"]}
        for batch, threads in cells:
            got = [res.get((batch, threads, v)) for v in ("slim", "sparse", "onnxruntime")]
            lines.append(f"| `{m['name']}` | {m['mac_reduction']:.2f}× | {batch} | {threads} | "
                         f"{res[(batch, threads, 'dense')]['median_ms']:.3f} | "
                         + " | ".join(f"{c['speedup_vs_dense']:.2f}×" if c else "–" for c in got) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed rounds per batch-64 cell (batch 1: 5x)")
    parser.add_argument("--quick", action="store_true", help="zoo models only (no synthetic layers)")
    parser.add_argument("--table", action="store_true", help="print the tables of the stored results only")
    args = parser.parse_args()
    if args.table:
        stored = json.loads(OUT.read_text())
        print(markdown(stored["synthetic"], stored["zoo_models"]))
        return
    if load_extension() is None:
        raise SystemExit("the sparse kernel could not be built here (no C++ compiler?): nothing to measure")
    previous = torch.get_num_threads()
    start = time.time()
    try:
        rows = [] if args.quick else synthetic(args.runs)
        models = zoo_models(args.runs)
    finally:
        torch.set_num_threads(previous)
    result = {"machine": machine_info(), "runs": args.runs, "seconds": round(time.time() - start, 1),
              "synthetic": rows, "targets": targets(rows), "zoo_models": models}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows, models))
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
