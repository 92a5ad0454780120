"""Render the README's benchmark tables from ``benchmarks/results/*.json``.

    .venv/bin/python benchmarks/readme_tables.py [--check]

Every table in README.md's Benchmarks section sits between ``<!-- generated: NAME -->`` and
``<!-- /generated -->``; this rewrites those regions from the committed results (the prose around them is
written by hand). ``--check`` rewrites nothing and exits 1 naming the tables that differ. Tables come from
each benchmark script's own printer where it has one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
REGION = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /generated -->", re.DOTALL)


class ReadmeTablesError(ValueError):
    """README markers that do not match the known tables."""


def _script(name: str) -> Any:
    """Import the benchmark script ``benchmarks/NAME.py`` (for its table printer), once."""
    key = f"_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).resolve().parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def zoo_models(rows: list[dict]) -> str:
    return _script("zoo_models").table(rows)


def mnist_frontier(result: dict) -> str:
    return _script("mnist_frontier").table(result["points"])


def artifact_size(result: dict) -> str:
    return _script("artifact_size").table(result)


def sparse_speed(result: dict) -> str:
    return _script("sparse_speed").markdown(result["synthetic"], result["zoo_models"])


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


TABLES: dict[str, Callable[[Any], str]] = {  # README region name -> renderer
    "zoo_models": zoo_models,
    "mnist_frontier": mnist_frontier,
    "train_overhead": train_overhead,
    "train_overhead_profile": train_overhead_profile,
    "artifact_size": artifact_size,
    "load_time": load_time,
    "sparse_speed": sparse_speed,
    "dashboard_load": dashboard_load,
}


SOURCES = {"train_overhead_profile": "train_overhead"}  # tables whose results file is not NAME.json


def render(name: str, results: Path = RESULTS) -> str:
    """The Markdown of table NAME from its results file (``results/NAME.json`` unless SOURCES says)."""
    if name not in TABLES:
        raise ReadmeTablesError(f"unknown README table {name!r}: known tables are {', '.join(TABLES)}")
    source = results / f"{SOURCES.get(name, name)}.json"
    if not source.is_file():
        raise ReadmeTablesError(f"no {source} for README table {name!r}: run benchmarks/{source.stem}.py first")
    return TABLES[name](json.loads(source.read_text()))


def regenerate(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """README text with every marked table rendered afresh, and the names of the tables that changed."""
    names = [m["name"] for m in REGION.finditer(text)]
    missing = [n for n in TABLES if n not in names]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if missing or doubled:
        raise ReadmeTablesError(f"README markers: missing {missing or 'none'}, repeated {doubled or 'none'}; "
                                "wrap each table in <!-- generated: NAME --> ... <!-- /generated --> once")
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
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    text = args.readme.read_text()
    try:
        new, changed = regenerate(text)
    except ReadmeTablesError as error:
        sys.exit(f"error: {error}")
    if args.check:
        if changed:
            sys.exit("README tables differ from benchmarks/results: " + ", ".join(changed)
                     + " (run: python benchmarks/readme_tables.py)")
        print("README tables match benchmarks/results")
        return
    if new != text:
        args.readme.write_text(new)
    print("regenerated: " + (", ".join(changed) or "nothing (all tables matched)"))


if __name__ == "__main__":
    main()
