"""``lilnetx export`` (alias ``compress``), ``lilnetx inspect`` and ``lilnetx verify``: the ``.lnx`` artifact."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any

import lilnetx
from lilnetx.artifact import DECODER_DTYPES, FLOAT_PARAM_DTYPES
from zoo.cli.output import format_table, print_json
from zoo.formatting import percent
from zoo.pipeline import export_run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", aliases=["compress"], help="write a training run as a .lnx artifact",
                              description="Entropy-code the model of a `lilnetx train` run folder into one "
                                          "verified .lnx file.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `lilnetx train --out RUN_DIR`")
    p.add_argument("-o", "--output", required=True, metavar="FILE.lnx", help="artifact to write")
    p.add_argument("--decoder-dtype", choices=DECODER_DTYPES,
                   help="store decoders in this type (default: the recipe's export.decoder_dtype, else the smallest "
                        "exact one; qint8 = int8 with a float16 scale per row); when that changes the weights, "
                        "the artifact is re-evaluated on the dataset's test split")
    p.add_argument("--float-dtype", choices=FLOAT_PARAM_DTYPES,
                   help="store each BatchNorm as its per-channel scale and shift in this type, other float "
                        "parameters in float16 (default: the recipe's export.float_dtype, else float16; lossy: the "
                        "artifact is re-evaluated); float32 keeps every float parameter exactly")
    p.add_argument("--no-history", action="store_true",
                   help="leave the training curves (metrics.jsonl, about 60 bytes an epoch) out of the header")
    p.add_argument("--keep-dead-paths", action="store_true",
                   help="store weights on dead paths too (by default, or unless the recipe's export.dead_paths "
                        "is false, they are zeroed: lossless, smaller)")
    p.add_argument("--onnx", metavar="FILE.onnx",
                   help="also write the slimmed model as ONNX, checked with onnxruntime against PyTorch "
                        "(needs the `onnx` extra)")
    p.add_argument("--json", action="store_true", help="print the artifact summary as JSON")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("inspect", help="show a .lnx artifact's header and size breakdown")
    p.add_argument("path", metavar="FILE.lnx")
    p.add_argument("--json", action="store_true", help="print the verified header and parts as JSON")
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser("verify", help="check a .lnx artifact completely (exit 0 if valid, 2 if not)")
    p.add_argument("path", metavar="FILE.lnx")
    p.set_defaults(func=run_verify)


# -- export ------------------------------------------------------------------------------------------------

def run_export(args: argparse.Namespace) -> int:
    if args.onnx:
        from lilnetx.onnx_export import require_onnxruntime
        from zoo.cli import CLIError

        try:
            require_onnxruntime()
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
    info = export_run(args.run_dir, args.output, decoder_dtype=args.decoder_dtype,
                      dead_paths=False if args.keep_dead_paths else None, float_dtype=args.float_dtype,
                      history=False if args.no_history else None)
    onnx = _export_onnx(str(info.path), args.onnx) if args.onnx else None
    if args.json:
        print_json({**dataclasses.asdict(info), "path": str(info.path), **({"onnx": onnx} if onnx else {})})
    else:
        parts = ", ".join(f"{name} {size:,}" for name, size in info.parts.items())
        print(f"wrote {info.path}: {info.size_bytes:,} bytes ({parts}); sha256 {info.sha256}")
        if onnx:
            print(f"wrote {onnx['path']}: {onnx['bytes']:,} bytes, the slimmed model; onnxruntime matches "
                  f"PyTorch to {onnx['max_abs_diff']:.2g}")
    return 0


def _export_onnx(artifact: str, output: str) -> dict[str, Any]:
    """The slimmed model of ``artifact`` written as ONNX to ``output`` (checked with onnxruntime)."""
    import torch

    from lilnetx.onnx_export import export_onnx

    model = lilnetx.load(artifact)
    input_size = tuple(model.pretrained_cfg["input_size"])
    return export_onnx(lilnetx.slim(model, example_input=torch.zeros(1, *input_size)), output, input_size)


# -- inspect / verify --------------------------------------------------------------------------------------

def _share(part: float, whole: float) -> str:
    return percent(part / whole if whole else None, 1, missing="-")


def header_lines(header: dict[str, Any], parts: dict[str, int]) -> list[str]:
    """Human-readable lines: identity, parts, per-layer sizes and sparsity, totals."""
    size = sum(parts.values())
    metrics = header.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
    versions = ", ".join(f"{k} {v}" for k, v in (header.get("versions") or {}).items())
    lines = [f"{header['arch']} {json.dumps(header['arch_kwargs'])}  (.lnx format {header['format_version']})",
             f"dataset {header.get('dataset') or '?'}; {shown or 'no metrics'}; input {header.get('input_size')}",
             f"written by {versions or '?'}; reparam {json.dumps(header['reparam'])}",
             "groups: " + ", ".join(f"{g['name']} (width {g['width']}, {g['dtype']} decoder, "
                                    f"{'shared' if g['shared'] else 'per-tensor'} tables)"
                                    for g in header["groups"]),
             ""]
    lines += format_table([("part", "bytes", "share")] + [(n, f"{b:,}", _share(b, size)) for n, b in parts.items()]
                    + [("total", f"{size:,}", _share(size, size))], right_align_from=1)
    widths = {g["name"]: g["width"] for g in header["groups"]}
    rows = [("layer", "group", "shape", "range", "est. B", "coded B", "zero", "zero slices")]
    for layer in header["layers"]:
        numel = math.prod(layer["shape"])
        rows.append((layer["name"], layer["group"], "x".join(map(str, layer["shape"])),
                     f"[{layer['range'][0]}, {layer['range'][1]}]", f"{layer['est_bits'] / 8:,.1f}",
                     f"{layer['coded_bits'] / 8:,.1f}", _share(layer["zeros"], numel),
                     _share(layer["zero_slices"], numel // widths[layer["group"]])))
    lines += ["", *format_table(rows, right_align_from=4), ""]
    total = {k: sum(layer[k] for layer in header["layers"]) for k in ("est_bits", "ideal_bits", "zeros")}
    numel = sum(math.prod(layer["shape"]) for layer in header["layers"])
    lines.append(f"latents: {numel:,} values, {_share(total['zeros'], numel)} zero; estimated "
                 f"{total['est_bits'] / 8:,.1f} B under the learned density, {total['ideal_bits'] / 8:,.1f} B "
                 f"ideal under the file's tables, {parts['coded_latents']:,} B coded")
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    artifact = lilnetx.read_artifact(args.path)
    if args.json:
        print_json({"path": args.path, "sha256": artifact.sha256, "size_bytes": artifact.size_bytes,
                    "parts": artifact.parts, "header": artifact.header})
    else:
        print("\n".join([f"{args.path}: {artifact.size_bytes:,} bytes, sha256 {artifact.sha256}",
                         *header_lines(artifact.header, artifact.parts)]))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    info = lilnetx.verify(args.path)
    print(f"OK {info.path}: {info.arch}, {info.size_bytes:,} bytes, sha256 {info.sha256}")
    return 0
