"""The MNIST size frontier: train every frontier recipe, export, measure each point from its ``.lnx`` file.

    .venv/bin/python benchmarks/mnist_frontier.py [--train] [--only NAME ...]

Points are the recipes in ``benchmarks/frontier_recipes/`` (A/B ablations) and the shipped zoo recipes in
``recipes/`` that ``SHIPPED`` names. For each: train into ``runs/frontier/NAME`` with ``lilnetx train --recipe``
when ``--train`` is given and no finished run exists (the training wall time comes from the run's own
``metrics.jsonl``), export with ``lilnetx export`` semantics (dead paths removed; once more without, to
measure that saving), then decode the file and evaluate it on the 10,000 MNIST test images. Shipped points
are written to ``zoo_artifacts/``. Writes ``benchmarks/results/mnist_frontier.json`` and the trade-off plot
``benchmarks/results/mnist_frontier.png`` with the published results beside ours; prints the README table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import lilnetx
from zoo import recipe as recipes
from zoo.measure import measure as measure_accuracy
from zoo.pipeline import export_run

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "benchmarks" / "frontier_recipes"
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED: tuple[str, ...] = ("lenet5_caffe.mnist-lam1", "lenet5_caffe.mnist-lam3", "lenet_300_100.mnist-lam05",
                            "resnet20.mnist-lam03", "timm%2Fmobilenetv2_050.mnist-lam1")  # recipes/ stems of frontier points shipped in zoo_artifacts/
PUBLISHED = [  # published whole-model sizes on the same data and architecture
    {"arch": "lenet5_caffe", "method": "EPR (ICLR 2020)", "bytes": 2840, "top1": 0.990},
    {"arch": "lenet5_caffe", "method": "MIRACLE", "bytes": 1150, "top1": 0.9902},
    {"arch": "lenet5_caffe", "method": "LilNetX reference code (fp32 side info)", "bytes": 11430, "top1": 0.9919},
    {"arch": "lenet_300_100", "method": "EPR (ICLR 2020)", "bytes": 8560, "top1": 0.981},
]


def points() -> list[tuple[str, Path, bool]]:
    """(name, recipe, shipped) of every frontier point."""
    found = [(p.stem, p, False) for p in sorted(ABLATIONS.glob("*.yaml"))]
    return found + [(name, ROOT / "recipes" / f"{name}.yaml", True) for name in SHIPPED]


def train(recipe: Path, run: Path) -> None:
    subprocess.run([sys.executable, "-m", "zoo.cli", "train", "--recipe", str(recipe), "--out", str(run),
                    "--no-progress"], check=True, cwd=ROOT)


@torch.no_grad()
def measure(path: Path) -> dict:
    """Accuracy of the decoded file on the dataset's test split, its size and parts, sparsity and MACs."""
    header = lilnetx.read_header(path)
    model = lilnetx.load(path)
    accuracy = measure_accuracy(model, header, timeout_s=math.inf)
    stats = lilnetx.stats(model, tuple(header["input_size"]))
    info = lilnetx.verify(path)
    return {"bytes": info.size_bytes, "parts": info.parts, "top1": accuracy.top1, "test_images": accuracy.images,
            "conv_slice_sparsity": stats["conv_slice_sparsity"], "weight_sparsity": stats["weight_sparsity"],
            "macs_dense": stats["macs_dense"], "macs_sparse": stats["macs_sparse"], "sha256": info.sha256}


def point(name: str, recipe: Path, shipped: bool, run: Path) -> dict:
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    spec = yaml.safe_load((run / "recipe.yaml").read_text())
    target = ROOT / "zoo_artifacts" / f"{name}.lnx" if shipped else run / f"{name}.lnx"
    export = recipes.export_settings(yaml.safe_load(recipe.read_text()))  # the recipe file's, as `lilnetx export`
    start = time.perf_counter()
    export_run(run, target, decoder_dtype=export["decoder_dtype"], dead_paths=export["dead_paths"])
    export_seconds = time.perf_counter() - start
    row = {"name": name, "arch": spec["arch"], "shipped": shipped, "recipe": str(recipe.relative_to(ROOT)),
           "epochs": len(log), "train_seconds": round(sum(r["seconds"] for r in log), 1),
           "export_seconds": round(export_seconds, 2), "export": export, "reparam": spec["reparam"],
           "train": {k: spec["train"][k] for k in ("epochs", "lr", "decoder_lr", "density_lr", "lambda_rate",
                                                     "lambda_slice", "warmup_epochs")},
           **measure(target)}
    with tempfile.TemporaryDirectory() as tmp:  # the same run with dead paths kept: what their removal saves
        kept = export_run(run, Path(tmp) / "kept.lnx", decoder_dtype=export["decoder_dtype"], dead_paths=False)
        row["bytes_with_dead_paths"] = kept.size_bytes
    return row


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    zoo_file = RESULTS / "zoo_models.json"  # the other shipped files, for context
    others = [r for r in (json.loads(zoo_file.read_text()) if zoo_file.is_file() else [])
              if r["name"] not in {row["name"] for row in rows}]

    archs = tuple(dict.fromkeys(r["arch"] for r in rows))  # one panel per architecture, in the rows' order
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        ours = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["bytes"])
        ax.scatter([r["bytes"] for r in ours], [100 * r["top1"] for r in ours], color="tab:blue", label="ours")
        for r in ours:
            ax.annotate(r["name"].split(".", 1)[-1], (r["bytes"], 100 * r["top1"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        for r in (r for r in others if r["name"].startswith(arch + ".")):
            ax.scatter([r["bytes"]], [100 * r["top1"]], color="tab:gray")
            ax.annotate(r["name"].split(".", 1)[-1], (r["bytes"], 100 * r["top1"]), fontsize=7, color="tab:gray",
                        xytext=(3, 3), textcoords="offset points")
        for p in (p for p in PUBLISHED if p["arch"] == arch):
            ax.scatter([p["bytes"]], [100 * p["top1"]], marker="s", color="tab:red")
            ax.annotate(p["method"], (p["bytes"], 100 * p["top1"]), fontsize=7, color="tab:red",
                        xytext=(3, -9), textcoords="offset points")
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("whole .lnx file (bytes; published: whole model)")
        ax.set_ylabel("MNIST test top-1 (%)")
        ax.set_title(arch)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train points that have no finished run")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="measure only these points (others are kept)")
    args = parser.parse_args()
    out = RESULTS / "mnist_frontier.json"
    previous = {r["name"]: r for r in json.loads(out.read_text())["points"]} if out.is_file() else {}
    rows = []
    for name, recipe, shipped in points():
        run = ROOT / "runs" / name if shipped else ROOT / "runs" / "frontier" / name  # as zoo_models.py
        if args.only and name not in args.only:
            if name in previous:
                rows.append(previous[name])
            continue
        if not (run / "stats.json").is_file():
            if not args.train:
                print(f"skipping {name}: no finished run in {run} (use --train)", file=sys.stderr)
                continue
            train(recipe, run)
        rows.append(point(name, recipe, shipped, run))
        print(json.dumps({k: rows[-1][k] for k in ("name", "bytes", "top1", "parts", "train_seconds")}))
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps({"published": PUBLISHED, "points": rows}, indent=1) + "\n")
    plot(rows, RESULTS / "mnist_frontier.png")
    print(table(rows))


def _label(row: dict, rows: list[dict]) -> str:
    """'shipped', the decoder forms (full where a point of the same architecture has others), a lossy export
    decoder type, the λ_rate."""
    forms = row["reparam"].get("decoder_forms") or {}
    alternatives = any(r["reparam"].get("decoder_forms") for r in rows if r["arch"] == row["arch"])
    parts = [f"{form} {group} decoder" for group, form in forms.items()] or (["full decoder"] if alternatives else [])
    if (row.get("export") or {}).get("decoder_dtype"):
        parts.append(f"{row['export']['decoder_dtype']} decoders at export")
    return ("shipped; " if row["shipped"] else "") + ", ".join([*parts, f"λ_rate {row['train']['lambda_rate']:g}"])


def table(rows: list[dict]) -> str:
    """The README's Markdown table: per architecture, shipped points first."""
    lines = ["| point | file bytes | top-1 | header / tables / decoders / floats / latents | with dead paths kept | epochs "
             "| train s (1 thread, shared CPU) |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["arch"], not r["shipped"], r["name"])):
        p = r["parts"]
        lines.append(f"| `{r['name']}` ({_label(r, rows)}) | {r['bytes']:,} | {100 * r['top1']:.2f} % "
                     f"| {p['header']} / {p['tables']} / {p['decoders']:,} / {p['float_params']:,} / {p['coded_latents']:,} "
                     f"| {r['bytes_with_dead_paths']:,} | {r['epochs']} | {r['train_seconds']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
