"""``lilnetx bench MODEL_NAME|FILE.lnx``: dense vs slimmed vs slice-sparse vs onnxruntime latency, with the form
each convolution ran; ``lilnetx build-kernels``: compile the C++ kernels ahead of first use."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from zoo.cli import CLIError
from zoo.cli.output import print_json, print_table


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 1,64)") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,64")
    return values


def _variants(text: str) -> tuple[str, ...]:
    from lilnetx.bench import VARIANTS

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in VARIANTS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(unknown) or text!r}; "
                                         f"choose from {','.join(VARIANTS)}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="time a model dense, slimmed, slice-sparse and in onnxruntime",
                              description="Latency of a zoo entry or .lnx file: dense PyTorch vs slimmed vs "
                                          "slice-sparse vs onnxruntime on the slimmed model, interleaved in one "
                                          "process (median and p90, throughput, speedups, MAC reduction).")
    p.add_argument("target", metavar="MODEL_NAME|FILE.lnx", help="a zoo entry (ARCH.TAG) or an .lnx file")
    p.add_argument("--batch", type=_int_list, default=(1,), metavar="1,64", help="batch sizes (default 1)")
    p.add_argument("--threads", type=_int_list, default=(1,), metavar="1,2", help="thread counts (default 1)")
    p.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed rounds first (default 3)")
    p.add_argument("--runs", type=int, default=10, metavar="R", help="timed rounds (default 10)")
    p.add_argument("--variants", type=_variants, default=None, metavar="dense,slim,sparse,onnxruntime",
                   help="which variants to time (default all)")
    p.add_argument("--store", action="store_true", help="record the results in the catalog (zoo entries only)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run_bench)
    k = subparsers.add_parser("build-kernels", help="compile the C++ kernels for this CPU (make does it at set-up)",
                              description="Compile the sparse-inference kernel for this CPU's instruction set and "
                                          "the fused training kernel, so that no first use waits for a compiler.")
    k.add_argument("--json", action="store_true", help="print what was built as JSON")
    k.set_defaults(func=run_build_kernels)


def run_build_kernels(args: argparse.Namespace) -> int:
    from lilnetx.native import build_kernels

    built = build_kernels()
    if args.json:
        print_json(built)
    else:
        for name, status in built.items():
            print(f"{name}: {status}")
    if any(status != "ready" for status in built.values()):
        raise CLIError("some kernels could not be built (see the warnings above); they run in plain PyTorch")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from zoo import benchmarks

    if args.runs < 1 or args.warmup < 0:
        raise CLIError("--runs must be at least 1 and --warmup at least 0")
    options: dict[str, Any] = {"batch_sizes": args.batch, "threads": args.threads, "warmup": args.warmup,
                               "runs": args.runs}
    if args.variants:
        options["variants"] = args.variants
    if not args.json and sys.stderr.isatty():
        options["progress"] = lambda fraction, message: print(f"\r[{fraction:4.0%}] {message:40}", end="",
                                                              file=sys.stderr, flush=True)
    is_file = args.target.endswith(".lnx") or Path(args.target).is_file()
    if is_file:
        if not Path(args.target).is_file():
            raise CLIError(f"{args.target}: no such file (give an existing .lnx file or a zoo entry name)")
        if args.store:
            raise CLIError("--store records results for zoo entries only; add the file first: "
                           "`lilnetx zoo add FILE.lnx --tag TAG`")
        result = benchmarks.bench_file(args.target, **options)
    else:
        from zoo.names import split_name
        from zoo.seed import seed_on_first_use
        from zoo.service import Zoo

        zoo = Zoo.from_env()
        split_name(args.target)  # a malformed name fails first
        seed_on_first_use(zoo)  # like `lilnetx zoo show NAME`: a new, empty catalog gets the shipped models
        result = benchmarks.bench_entry(zoo, args.target, **options)
        if args.store:
            result["stored_rows"] = benchmarks.store_results(zoo, args.target, result)
    if "progress" in options:
        print(file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        _print(args.target, result)
    return 0


def layer_rows(layers: list[dict[str, Any]]) -> list[list[Any]]:
    """A table of ``result["layers"]``: layer, kernel, zeros (K×K slices of a convolution, weights of a linear
    layer), then the form per batch and threads."""
    configs = sorted({c for layer in layers for c in layer["forms"] if c != "all"})
    rows: list[list[Any]] = [["layer", "kernel", "zeros", *configs]]
    for layer in layers:
        forms = layer["forms"]
        cells = [_form_cell(forms.get(c) or forms.get("all")) for c in configs] or [_form_cell(forms.get("all"))]
        share = layer.get("zero_slice_share")
        zeros = f"{share:.0%} slices" if share is not None else f"{layer.get('zero_weight_share', 0):.0%} weights"
        rows.append([layer["name"], layer["kernel"], zeros, *cells])
    return rows


def _form_cell(form: dict[str, Any] | None) -> str:
    if not form:
        return "-"
    if "speedup" in form:
        return f"{form['form']} ({form['speedup']:.2f}x)"
    return form["form"]


def _print(target: str, result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"{target}: input {tuple(result['input_size'])}, MACs per image dense {result['macs_dense']:,}, "
          f"with zero slices skipped {result['macs_sparse']:,} (ideal speedup "
          f"{result['mac_reduction']:.2f}x)" if result["mac_reduction"] else f"{target}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, {' '.join(m['isa'])}; torch {m['versions']['torch']}, "
          f"onnxruntime {m['versions']['onnxruntime']}")
    rows: list[list[Any]] = [["variant", "batch", "threads", "median ms", "p90 ms", "images/s", "vs dense"]]
    for r in result["results"]:
        speedup = f"{r['speedup_vs_dense']:.2f}x" if r["speedup_vs_dense"] else "-"
        rows.append([r["variant"], r["batch"], r["threads"], f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                     f"{r['throughput_per_s']:,.0f}", speedup])
    print_table(rows, right_align_from=1)
    if result.get("engines"):
        print("\nthe sparse variant's engine (fastest measured here): "
              + ", ".join(f"{setting} {chosen['engine']}" for setting, chosen in sorted(result["engines"].items())))
    if result.get("layers"):
        print("\nwhat the sparse variant ran per convolution (speed-up of the kernel over dense conv2d, measured):")
        print_table(layer_rows(result["layers"]), right_align_from=2)
    for variant, reason in result["skipped"].items():
        print(f"skipped {variant}: {reason}")
    if "stored_rows" in result:
        print(f"stored {result['stored_rows']} rows in the catalog")
