"""Build the zoo's shipped artifacts from the recipes and measure each one from its file.

    .venv/bin/python benchmarks/zoo_models.py [--export] [--train]

For every ``recipes/ARCH.TAG.yaml``: with ``--export``, (``--train``: train into ``runs/ARCH.TAG`` when that
run is missing) and export the run to ``zoo_artifacts/ARCH.TAG.lnx`` (a shipped file whose run is gone and that
holds float parameters is rewritten in the current format instead: ``convert``) (a ``/`` in ARCH is written ``%2F`` in
these file names: ``zoo.names.to_filename``); then decode the shipped file and evaluate it on the dataset's
real test split (entries without a file are skipped). Writes
``benchmarks/results/zoo_models.json`` and prints the README table; figures come from the artifacts only,
beside each entry's dense twin (``benchmarks/results/dense_baseline.json``: the same network and schedule
trained without LilNetX) and the int8 + xz size of the same decoded network (every float tensor as int8 with one
float32 scale, compressed by xz at its strongest preset).
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import lilnetx
from zoo import recipe as recipes
from zoo.measure import measure as measure_accuracy
from zoo.names import from_filename, split_name, to_filename
from zoo.pipeline import export_run

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # published whole-model sizes of the prior work on the same data and architecture
    "lenet5_caffe": ("EPR: 2.84 KB at 99.0 %; reference LilNetX code: 5.46 KB latents + 5.97 KB side info "
                     "(≈11.4 KB) at 99.19 %"),
    "lenet_300_100": "EPR: 8.56 KB at 98.1 %",
}


SCHEDULE = ("arch", "arch_kwargs", "dataset", "dataset_kwargs")  # with train's epochs, batch size, lr, seed
DENSE = ROOT / "benchmarks" / "results" / "dense_baseline.json"


def int8_xz_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s float tensors as int8 (a float32 scale max|t| / 127 each), xz-compressed."""
    chunks = []
    for value in model.state_dict().values():
        if value.is_floating_point():
            scale = float(value.abs().max()) / 127 or 1.0
            chunks.append(torch.tensor([scale], dtype=torch.float32).numpy().tobytes())
            chunks.append(torch.round(value / scale).clamp(-127, 127).to(torch.int8).numpy().tobytes())
    return len(lzma.compress(b"".join(chunks), preset=9 | lzma.PRESET_EXTREME))


def dense_twin(recipe: dict, dense: dict[str, dict]) -> dict | None:
    """The dense baseline trained on ``recipe``'s network, data and schedule, if one was run."""
    def key(r: dict) -> tuple:
        train = r.get("train") or {}
        return (*(json.dumps(r.get(k) or None, sort_keys=True) for k in SCHEDULE),
                *(train.get(k) for k in ("epochs", "batch_size", "lr", "seed")))
    return next((row for row in dense.values() if key(row["recipe"]) == key(recipe)), None)


def convert(path: Path, recipe: dict) -> None:
    """Rewrite a shipped artifact whose run is gone in the current format when that changes its float parameters
    (BatchNorm as scale and shift): same latents and decoders, the recipe's ``export.float_dtype``; the header's
    metrics are measured on the rewritten file (the learned densities are not stored, so the tables are refitted
    to the latents)."""
    header = lilnetx.read_header(path)
    if header["format_version"] == lilnetx.artifact.FORMAT_VERSION or not header["float_params"]:
        return
    model = lilnetx.load(path, reparameterized=True)
    float_dtype = recipes.export_settings(recipe)["float_dtype"]
    metadata = {"dataset": header["dataset"], "recipe": header["recipe"], **header["metadata"]}
    lilnetx.save(model, path, metadata=metadata, float_dtype=float_dtype)
    measured = measure_accuracy(lilnetx.load(path), lilnetx.read_header(path), timeout_s=math.inf)
    metrics = {"top1": measured.top1, "top5": measured.top5}
    lilnetx.save(model, path, metadata=metadata | {"metrics": metrics}, float_dtype=float_dtype)


def measure(name: str, path: Path) -> dict:
    header = lilnetx.read_header(path)
    model = lilnetx.load(path)
    accuracy = measure_accuracy(model, header, timeout_s=math.inf)
    stats = lilnetx.stats(model, tuple(header["input_size"]))
    fp32 = 4 * sum(p.numel() for p in model.state_dict().values() if p.is_floating_point())
    info = lilnetx.verify(path)
    return {"name": name, "dataset": header["dataset"], "bytes": info.size_bytes, "parts": info.parts,
            "fp32_bytes": fp32, "int8_xz_bytes": int8_xz_bytes(model),
            "top1": accuracy.top1, "top5": accuracy.top5, "recorded_top1": header["metrics"].get("top1"),
            "conv_slice_sparsity": stats["conv_slice_sparsity"], "weight_sparsity": stats["weight_sparsity"],
            "macs_dense": stats["macs_dense"], "macs_sparse": stats["macs_sparse"], "sha256": info.sha256}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="store_true", help="re-export the shipped files from their runs")
    parser.add_argument("--train", action="store_true", help="with --export: train runs that are missing")
    args = parser.parse_args()
    rows = []
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        name, run = from_filename(recipe.stem), ROOT / "runs" / recipe.stem
        artifact = ROOT / "zoo_artifacts" / f"{to_filename(name)}.lnx"
        if args.export and not (run / "stats.json").is_file() and args.train:
            subprocess.run([sys.executable, "-m", "zoo.cli", "train", "--recipe", str(recipe), "--out", str(run),
                            "--no-progress"], check=True)
        if args.export and (run / "stats.json").is_file():
            artifact.parent.mkdir(exist_ok=True)
            export = recipes.export_settings(recipes.load(recipe))  # the recipe file's, as `lilnetx export`
            export_run(run, artifact, decoder_dtype=export["decoder_dtype"], dead_paths=export["dead_paths"],
                       float_dtype=export["float_dtype"])
        elif args.export and artifact.is_file():
            convert(artifact, recipes.load(recipe))
        if not artifact.is_file():
            print(f"skipping {name}: no {artifact} (use --export, with --train for a missing run)", file=sys.stderr)
            continue
        row = measure(name, artifact)
        twin = dense_twin(recipes.load(recipe), json.loads(DENSE.read_text()) if DENSE.is_file() else {})
        rows.append(row | {"dense_top1": None if twin is None else twin["top1"]})
    out = ROOT / "benchmarks" / "results" / "zoo_models.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"  # —: no K×K convolutions


def _dense(row: dict) -> str:
    if row.get("dense_top1") is None:
        return "—"
    return f"{100 * row['dense_top1']:.2f} % ({100 * (row['top1'] - row['dense_top1']):+.2f})"


def _int8_xz(row: dict) -> str:
    return "—" if row.get("int8_xz_bytes") is None else f"{row['int8_xz_bytes'] / row['bytes']:.1f}×"


def table(rows: list[dict]) -> str:
    """The README's Markdown table of the measured shipped files."""
    lines = ["| zoo entry | dataset | file bytes | vs fp32 | vs int8 + xz | top-1 | dense twin (gap) "
             "| conv slice sparsity | weight sparsity | MACs with zero slices skipped | prior work (whole model) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| `{r['name']}` | {r['dataset']} | {r['bytes']:,} | {r['fp32_bytes'] / r['bytes']:.0f}× "
              f"| {_int8_xz(r)} | {100 * r['top1']:.2f} % | {_dense(r)} "
              f"| {_share(r['conv_slice_sparsity'])} | {_share(r['weight_sparsity'])} "
              f"| {r['macs_sparse'] / r['macs_dense']:.1%} of dense "
              f"| {PAPER.get(split_name(r['name'])[0], '')} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
