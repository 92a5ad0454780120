"""Render the generated tables of README.md and docs/*.md from ``benchmarks/results/*.json``.

    .venv/bin/python benchmarks/readme_tables.py [--check]

Every generated table sits between ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` in the document
``DOCUMENTS`` names for it; this rewrites those regions from the committed results (the prose around them is
written by hand). ``--check`` rewrites nothing and exits 1 naming the tables that differ. Tables come from
each benchmark script's own printer where it has one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.formatting import percent

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REGION = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /generated -->", re.DOTALL)


class ReadmeTablesError(ValueError):
    """Document markers that do not match the known tables, or a missing results file."""


def _script(name: str) -> Any:
    """Import the benchmark script ``benchmarks/NAME.py`` (for its table printer), once."""
    key = f"_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).resolve().parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]  # a script that fails to import is not cached half-built
            raise
    return sys.modules[key]


def zoo_models(rows: list[dict]) -> str:
    return _script("zoo_models").table(rows)


def mnist_frontier(result: dict) -> str:
    return _script("mnist_frontier").table(result["points"])


def artifact_size(result: dict) -> str:
    return _script("artifact_size").table(result)


def sparse_speed(result: dict) -> str:
    return _script("sparse_speed").markdown(result)


def slice_overlap(result: dict) -> str:
    return _script("slice_overlap").markdown(result)


def train_overhead(result: dict) -> str:
    return _script("train_overhead").table(result["rows"])


def train_overhead_profile(result: dict) -> str:
    return _script("train_overhead").profile_table(result["rows"])


def load_time(result: dict) -> str:
    """Median cold-process seconds of `import torch` and of the zoo load, and their ratio."""
    torch_s, load_s = result["median_s"]["import_torch"], result["median_s"]["zoo_load"]
    return "\n".join(["| command | median s | ratio |", "|---|---:|---:|",
                      f"| `{result['baseline']}` | {torch_s:.2f} | 1.00× |",
                      f"| `{result['command']}` | {load_s:.2f} | {result['ratio']:.2f}× |"])


def _target(target: float, met: bool, unit: str, suffix: str = "") -> str:
    return f"≤ {target:g} {unit}: " + (f"met{suffix}" if met else "**missed**")


def dashboard_load(result: dict) -> str:
    """Browser paint and filter times against targets and Streamlit baselines; catalog read times."""
    b, t, read = result["browser"], result["targets"], result["catalog_read"]
    filters = b["filter_change_s"]
    rows = [
        ("Browse first paint, new session (navigation → table and entry count visible)",
         f"{b['first_paint_warm_median_s']:.2f} s",
         _target(t["first_paint_s"], t["first_paint_warm_met"], "s")),
        ("the same, first visit after the server started (imports, first catalog query)",
         f"{b['first_paint_cold_s']:.2f} s", "–"),
        (f"baseline: bare Streamlit page / page with a {result['entries']:,}-row `st.dataframe`",
         f"{b['baseline_hello_paint_median_s']:.2f} s / {b['baseline_grid_paint_median_s']:.2f} s", "–"),
        (f"filter change (name search, Enter → new count visible), {len(filters)} changes",
         f"median {b['filter_change_median_s']:.2f} s, max {b['filter_change_max_s']:.2f} s",
         _target(t["filter_change_s"], t["filter_change_met"], "s", " (median)")),
        ("reading every entry: `Zoo.list()` vs `queries.entry_table` (one joined query)",
         f"{1000 * read['zoo_list_s']:.0f} ms vs {1000 * read['entry_rows_s']:.0f} ms ({read['speedup']:.1f}×)",
         "–"),
    ]
    return "\n".join(["| measure | result | target |", "|---|---:|---|",
                      *(f"| {m} | {r} | {g} |" for m, r, g in rows)])


def cli_latency(result: dict) -> str:
    return _script("cli_latency").table(result)


def zoo_summary(rows: list[dict]) -> str:
    """The README's short table of the shipped models: dataset, accuracy beside the dense twin, size, sparsity,
    MACs left."""
    lines = ["| zoo entry | dataset | top-1 | dense twin | file bytes | smaller than float32 | conv slice sparsity "
             "| weight sparsity | MACs with zero slices skipped |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r['name']}` | {r['dataset']} | {percent(r['top1'])} "
              f"| {percent(r.get('dense_top1'), missing='—')} "
              f"| {r['bytes']:,} | {r['fp32_bytes'] / r['bytes']:.0f}× "
              f"| {percent(r['conv_slice_sparsity'], 1, missing='—')} "
              f"| {percent(r['weight_sparsity'], 1)} | {percent(r['macs_sparse'] / r['macs_dense'], 1)} of dense |"
              for r in rows]
    return "\n".join(lines)


def _span(values: list[float], unit: str = "×") -> str:
    """``low–high`` to two decimals, the low end rounded down (0.995× reads 0.99×, not 1.00×)."""
    low, high = math.floor(min(values) * 100) / 100, max(values)
    return f"{low:.2f}{unit}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}{unit}"


def headline(results: dict[str, Any]) -> str:
    """The README's headline figures, one per benchmark, each linking to its section of docs/performance.md."""
    zoo, size, train = results["zoo_models"], results["artifact_size"], results["train_overhead"]
    best = min((r for r in zoo if r["dataset"] == "mnist" and r["top1"] >= 0.99), key=lambda r: r["bytes"])
    lnx = next(r for r in size["rows"] if r["format"] == ".lnx as shipped")
    xz = next(r for r in size["rows"] if r["format"] == "fp32 state_dict + xz")
    cells = [c for c in results["sparse_speed"]["synthetic"] if c["sparsity"] == 0.95 and c["threads"] == 1]
    load, paint = results["load_time"], results["dashboard_load"]
    models = results["sparse_speed"]["zoo_models"]
    vs_dense, vs_ort = [], []
    for model in models:
        ms = {(r["variant"], r["batch"]): r for r in model["results"] if r["threads"] == 1}
        for (variant, batch), r in ms.items():
            if variant == "sparse":
                vs_dense.append(r["speedup_vs_dense"])
                vs_ort.append(ms[("onnxruntime", batch)]["median_ms"] / r["median_ms"])
    rows = [
        ("smallest shipped model at ≥ 99 % MNIST top-1",
         f"`{best['name']}`: {best['bytes']:,} B at {percent(best['top1'])}, "
         f"{best['fp32_bytes'] / best['bytes']:.0f}× smaller than float32", "the-shipped-zoo-models"),
        (f"`.lnx` vs float32 `state_dict` + xz, same model (`{Path(size['artifact']).name}`)",
         f"{lnx['bytes']:,} B vs {xz['bytes']:,} B", "artifact-size"),
        (f"training step vs plain PyTorch ({len(train['rows'])} models, C++ pass)",
         _span([r["ratio"] for r in train["rows"]]) + f"; peak memory {train['memory']['ratio']:.2f}×",
         "training-overhead"),
        ("slice-sparse 3×3 conv vs dense `conv2d`, 95 % zero slices, 1 thread",
         _span([c["chosen_vs_nchw"] for c in cells]) + " faster (ideal 20×)", "sparse-inference-speed"),
        (f"`zoo.load(name, slim=True)` vs dense PyTorch / onnxruntime on the slimmed model, all {len(models)} "
         "shipped models, batch 1 and 32, 1 thread",
         _span(vs_dense) + " / " + _span(vs_ort), "sparse-inference-speed"),
        ("`zoo.load` in a new process vs `import torch`", f"{load['ratio']:.2f}×", "load-time"),
        (f"dashboard first paint, {paint['entries']:,} entries",
         f"{paint['browser']['first_paint_warm_median_s']:.2f} s (target {paint['targets']['first_paint_s']:g} s)",
         "dashboard-load"),
    ]
    return "\n".join(["| figure | result | details |", "|---|---|---|",
                      *(f"| {what} | {result} | [performance](docs/performance.md#{anchor}) |"
                        for what, result, anchor in rows)])


def hostile_inputs(result: dict) -> str:
    return _script("hostile_inputs").table(result)


TABLES: dict[str, Callable[[Any], str]] = {  # region name -> renderer
    "zoo_summary": zoo_summary,
    "headline": headline,
    "zoo_models": zoo_models,
    "mnist_frontier": mnist_frontier,
    "train_overhead": train_overhead,
    "train_overhead_profile": train_overhead_profile,
    "artifact_size": artifact_size,
    "load_time": load_time,
    "sparse_speed": sparse_speed,
    "slice_overlap": slice_overlap,
    "dashboard_load": dashboard_load,
    "cli_latency": cli_latency,
    "hostile_inputs": hostile_inputs,
}

DOCUMENTS: dict[str, tuple[str, ...]] = {  # document (relative to the repository) -> the tables it holds
    "README.md": ("zoo_summary", "headline"),
    "docs/performance.md": ("zoo_models", "mnist_frontier", "train_overhead", "train_overhead_profile",
                            "artifact_size", "load_time", "cli_latency", "sparse_speed", "slice_overlap",
                            "dashboard_load"),
    "docs/security.md": ("hostile_inputs",),
}

# tables whose results file is not NAME.json; a tuple hands the renderer {stem: results} of several files
SOURCES: dict[str, str | tuple[str, ...]] = {
    "zoo_summary": "zoo_models",
    "train_overhead_profile": "train_overhead",
    "headline": ("zoo_models", "artifact_size", "train_overhead", "sparse_speed", "load_time", "dashboard_load"),
}


def _results(stem: str, name: str, results: Path) -> Any:
    source = results / f"{stem}.json"
    if not source.is_file():
        raise ReadmeTablesError(f"no {source} for table {name!r}: run benchmarks/{stem}.py first")
    return json.loads(source.read_text())


def render(name: str, results: Path = RESULTS) -> str:
    """The Markdown of table NAME from its results file(s) (``results/NAME.json`` unless SOURCES says)."""
    if name not in TABLES:
        raise ReadmeTablesError(f"unknown table {name!r}: known tables are {', '.join(TABLES)}")
    source = SOURCES.get(name, name)
    if isinstance(source, tuple):
        return TABLES[name]({stem: _results(stem, name, results) for stem in source})
    return TABLES[name](_results(source, name, results))


def regenerate(text: str, names: tuple[str, ...], results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with each of the tables ``names`` rendered afresh, and the names of the tables that changed."""
    found = [m["name"] for m in REGION.finditer(text)]
    missing = [n for n in names if n not in found]
    doubled = sorted({n for n in found if found.count(n) > 1})
    foreign = sorted({n for n in found if n not in names})
    if missing or doubled or foreign:
        raise ReadmeTablesError(f"markers: missing {missing or 'none'}, repeated {doubled or 'none'}, "
                                f"not this document's {foreign or 'none'}; wrap each of {', '.join(names)} "
                                "in <!-- generated: NAME --> ... <!-- /generated --> once")
    changed: list[str] = []

    def fresh(match: re.Match[str]) -> str:
        body = f"\n{render(match['name'], results)}\n\n"
        if body != match["body"]:
            changed.append(match["name"])
        return f"<!-- generated: {match['name']} -->\n{body}<!-- /generated -->"

    return REGION.sub(fresh, text), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a table differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the folder the documents are in")
    args = parser.parse_args()
    changed: list[str] = []
    for document, names in DOCUMENTS.items():
        path = args.root / document
        text = path.read_text()
        try:
            new, differ = regenerate(text, names)
        except ReadmeTablesError as error:
            sys.exit(f"error: {document}: {error}")
        changed += [f"{document}: {name}" for name in differ]
        if new != text and not args.check:
            path.write_text(new)
    if args.check:
        if changed:
            sys.exit("tables differ from benchmarks/results: " + ", ".join(changed)
                     + " (run: python benchmarks/readme_tables.py)")
        print("tables match benchmarks/results")
        return
    print("regenerated: " + (", ".join(changed) or "nothing (all tables matched)"))


if __name__ == "__main__":
    main()
