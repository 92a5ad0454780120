"""``lilnetx export`` (alias ``compress``), ``lilnetx inspect`` and ``lilnetx verify``: the ``.lnx`` artifact."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

import lilnetx
from lilnetx.artifact import DTYPES, FLOAT_DTYPES, ArtifactInfo
from lilnetx.dead_paths import remove_dead_paths
from zoo import recipe as recipes
from zoo.cli import CLIError
from zoo.cli.output import format_table, print_json

METRIC_KEYS = ("top1", "top5", "test_loss")
EVAL_BATCH_SIZE = 256


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", aliases=["compress"], help="write a training run as a .lnx artifact",
                              description="Entropy-code the model of a `lilnetx train` run folder into one "
                                          "verified .lnx file.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `lilnetx train --out RUN_DIR`")
    p.add_argument("-o", "--output", required=True, metavar="FILE.lnx", help="artifact to write")
    p.add_argument("--decoder-dtype", choices=FLOAT_DTYPES,
                   help="store decoders at this precision (default: the narrowest exact one); when that "
                        "changes the weights, the artifact is re-evaluated on the dataset's test split")
    p.add_argument("--keep-dead-paths", action="store_true",
                   help="store weights on dead paths too (by default they are zeroed: lossless, smaller)")
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

def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(recipe, stats, checkpoint) of a run folder, with errors that say what is missing."""
    for name in ("checkpoint.pt", "recipe.yaml"):
        if not (run_dir / name).is_file():
            raise CLIError(f"{run_dir} is not a training run: {name} is missing "
                           "(train one with `lilnetx train ARCH --dataset NAME --out RUN_DIR`)")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    if not isinstance(recipe, dict) or not recipe.get("arch"):
        raise CLIError(f"{run_dir / 'recipe.yaml'} names no arch; it was not written by `lilnetx train`")
    stats_path = run_dir / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CLIError(f"{run_dir / 'checkpoint.pt'} is not a LilNetX training checkpoint")
    return recipe, stats, checkpoint


def _changes_weights(model: nn.Module, decoder_dtype: str | None) -> bool:
    """Whether storing ``model``'s decoders as ``decoder_dtype`` rounds any of them (a lossy export)."""
    if decoder_dtype is None:
        return False
    dtype = DTYPES[decoder_dtype][1]
    return any(not torch.equal(g.decoder.detach().to(dtype).to(g.decoder.dtype), g.decoder.detach())
               for g in lilnetx.latent_groups(model).values())


def export_run(run_dir: str | Path, output: str | Path, *, decoder_dtype: str | None = None,
               dead_paths: bool = True) -> ArtifactInfo:
    """Write the model of training run ``run_dir`` to ``output`` with its dataset, metrics and recipe.

    ``dead_paths`` zeroes the weights that cannot change any output first (``lilnetx.dead_paths``: lossless).

    The metrics are the run's, unless ``decoder_dtype`` rounds the decoders: then they are measured on the
    decoded artifact itself, on the dataset's test split.
    """
    recipe, stats, checkpoint = _read_run(Path(run_dir))
    model, data = recipes.build_model(recipe)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CLIError(f"the checkpoint in {run_dir} does not fit the model its recipe builds: {exc}") from exc
    if dead_paths:
        remove_dead_paths(model)
    metadata = {"dataset": recipe.get("dataset"), "metrics": {k: stats[k] for k in METRIC_KEYS if k in stats},
                "recipe": recipe, "run": {"epochs": stats.get("epochs", checkpoint.get("epoch"))}}
    if _changes_weights(model, decoder_dtype):
        with tempfile.TemporaryDirectory() as tmp:
            lilnetx.save(model, Path(tmp) / "lossy.lnx", decoder_dtype=decoder_dtype)
            decoded = lilnetx.load(Path(tmp) / "lossy.lnx")
        measured = lilnetx.evaluate(decoded, DataLoader(data.test, batch_size=EVAL_BATCH_SIZE), torch.device("cpu"))
        metadata["metrics"] = {k: measured[k] for k in METRIC_KEYS}
    return lilnetx.save(model, output, metadata=metadata, decoder_dtype=decoder_dtype)


def run_export(args: argparse.Namespace) -> int:
    info = export_run(args.run_dir, args.output, decoder_dtype=args.decoder_dtype,
                      dead_paths=not args.keep_dead_paths)
    if args.json:
        print_json({**dataclasses.asdict(info), "path": str(info.path)})
    else:
        parts = ", ".join(f"{name} {size:,}" for name, size in info.parts.items())
        print(f"wrote {info.path}: {info.size_bytes:,} bytes ({parts}); sha256 {info.sha256}")
    return 0


# -- inspect / verify --------------------------------------------------------------------------------------

def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"


def describe(header: dict[str, Any], parts: dict[str, int]) -> list[str]:
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
    lines += format_table([("part", "bytes", "%")] + [(n, f"{b:,}", _percent(b, size)) for n, b in parts.items()]
                    + [("total", f"{size:,}", "100.0")], right_align_from=1)
    widths = {g["name"]: g["width"] for g in header["groups"]}
    rows = [("layer", "group", "shape", "range", "est. B", "coded B", "zero %", "zero slices %")]
    for layer in header["layers"]:
        numel = math.prod(layer["shape"])
        rows.append((layer["name"], layer["group"], "x".join(map(str, layer["shape"])),
                     f"[{layer['range'][0]}, {layer['range'][1]}]", f"{layer['est_bits'] / 8:,.1f}",
                     f"{layer['coded_bits'] / 8:,.1f}", _percent(layer["zeros"], numel),
                     _percent(layer["zero_slices"], numel // widths[layer["group"]])))
    lines += ["", *format_table(rows, right_align_from=4), ""]
    total = {k: sum(layer[k] for layer in header["layers"]) for k in ("est_bits", "ideal_bits", "zeros")}
    numel = sum(math.prod(layer["shape"]) for layer in header["layers"])
    lines.append(f"latents: {numel:,} values, {_percent(total['zeros'], numel)} % zero; estimated "
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
                         *describe(artifact.header, artifact.parts)]))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    info = lilnetx.verify(args.path)
    print(f"OK {info.path}: {info.arch}, {info.size_bytes:,} bytes, sha256 {info.sha256}")
    return 0
