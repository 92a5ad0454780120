"""Dashboard load with 1,000 catalogued entries, measured in Debian's chromium.

Catalogues copies of the shipped artifacts under generated tags (each artifact described once, then
catalogued under many names), starts ``lilnetx dashboard`` on that catalog and measures in the browser:

- first paint of Browse: from navigation to the table and its entry count being visible, for the very first
  visit after the server started (cold: imports and the catalog query) and for new sessions afterwards;
- a filter change: from pressing Enter in the name search to the new entry count being visible;
- the baselines, in the same sessions: first paint of a Streamlit page that only shows a title (the
  framework's own floor on this machine and browser), and of one with a title and a 1,000-row
  ``st.dataframe`` (the floor of any page with Streamlit's data grid).

It also times reading the catalog both ways in the same run: ``Zoo.list()`` (the one joined listing query and
its rows, plus a store check per entry) against the dashboard's ``dashboard.catalog.entry_rows`` (the same
query and rows). Targets: first paint <= 2 s, filter change <= 0.5 s.

    .venv/bin/python benchmarks/dashboard_load.py            # writes benchmarks/results/dashboard_load.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashboard import catalog, data, testing  # noqa: E402
from zoo.catalog.engine import get_engine  # noqa: E402
from zoo.catalog.queries import STORE_URI  # noqa: E402
from zoo.cli.dashboard_cmds import streamlit_command  # noqa: E402
from zoo.ingest import describe  # noqa: E402
from zoo.names import from_filename, split_name  # noqa: E402
from zoo.service import Zoo  # noqa: E402
from zoo.store import Store  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "dashboard_load.json"
FIRST_PAINT_TARGET_S, FILTER_TARGET_S = 2.0, 0.5
SEARCHES = ("lam20", "*-g0007*", "lenet_300*", "*-g09??-*", "lenet5*lam5")  # each count differs from the last


def build_catalog(root: Path, entries: int) -> Zoo:
    """``entries`` entries: the shipped artifacts catalogued again and again under tags ``<dataset>-gNNNN``."""
    zoo = Zoo(get_engine(f"sqlite:///{root / 'registry.db'}"), Store(root / "home" / "store"), measure_timeout_s=0)
    shipped = sorted((ROOT / "zoo_artifacts").glob("*.lnx"))
    records = []
    for path in shipped:
        record = describe(path).record
        zoo.store.put_file(path, sha256=record.sha256)
        records.append(record)
    for i in range(entries):
        record = records[i % len(records)]
        arch, tag = split_name(from_filename(shipped[i % len(shipped)].stem))
        zoo.catalogue(f"{arch}.{record.dataset}-g{i:04d}-{tag.split('-', 1)[-1]}", record.dataset, record,
                      f"{STORE_URI}{record.sha256}")
    return zoo


def time_reads(zoo: Zoo, repeats: int = 3) -> dict[str, float]:
    """Median seconds to read every entry: ``Zoo.list()`` vs the dashboard's rows (same query and rows)."""
    def best(fn) -> float:  # noqa: ANN001
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    listed, joined = best(zoo.list), best(lambda: catalog.entry_rows(zoo.engine))
    return {"zoo_list_s": listed, "entry_rows_s": joined, "speedup": listed / joined}


BASELINES = {
    "hello": 'import streamlit as st\n\nst.title("Hello")\n',
    "grid": ('import numpy as np, pandas as pd, streamlit as st\n\nst.set_page_config(layout="wide")\n'
             'st.title("Hello")\nst.dataframe(pd.DataFrame(np.random.rand(1000, 12)), hide_index=True)\n'),
}


@contextmanager
def baseline_app(folder: Path, kind: str) -> Iterator[str]:
    """A baseline Streamlit app (only a title; a title and a 1,000-row ``st.dataframe``), served with the
    dashboard's settings."""
    app = folder / f"{kind}.py"
    app.write_text(BASELINES[kind])
    port = testing.free_port()
    process = subprocess.Popen(streamlit_command("127.0.0.1", port, app), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def measure_browser(url: str, baselines: dict[str, str], names: list[str], sessions: int) -> dict[str, object]:
    from playwright.sync_api import expect, sync_playwright

    entries = len(names)
    paints, filters = [], []
    base: dict[str, list[float]] = {kind: [] for kind in baselines}
    with sync_playwright() as p:
        browser = testing.launch_chromium(p)
        for session in range(sessions + 1):
            for kind, baseline_url in baselines.items():
                page = browser.new_context(viewport=testing.WIDE).new_page()
                start = time.perf_counter()
                page.goto(baseline_url)
                expect(page.get_by_role("heading", name="Hello")).to_be_visible(timeout=120_000)
                if kind == "grid":
                    expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible(timeout=120_000)
                base[kind].append(time.perf_counter() - start)
                page.context.close()
            page = browser.new_context(viewport=testing.WIDE).new_page()
            start = time.perf_counter()
            page.goto(url)
            expect(page.get_by_text(f"{entries:,} of {entries:,} entries")).to_be_visible(timeout=120_000)
            expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()
            paints.append(time.perf_counter() - start)
            if session == 0:
                continue  # the cold visit: no filter timing
            testing.wait_until_idle(page)
            search = page.get_by_role("textbox", name="Search names")
            for text in SEARCHES:
                pattern = data.name_pattern(text)
                expected = sum(fnmatch.fnmatchcase(n.lower(), pattern) for n in names)
                search.fill(text)
                start = time.perf_counter()
                search.press("Enter")
                page.get_by_text(f"{expected:,} of {entries:,} entries").wait_for(timeout=60_000)
                filters.append(time.perf_counter() - start)
            page.context.close()
        browser.close()
    warm = paints[1:]
    return {"first_paint_cold_s": paints[0], "first_paint_warm_s": warm, "filter_change_s": filters,
            "baseline_hello_paint_s": base["hello"][1:],
            "baseline_hello_paint_median_s": statistics.median(base["hello"][1:]),
            "baseline_grid_paint_s": base["grid"][1:],
            "baseline_grid_paint_median_s": statistics.median(base["grid"][1:]),
            "first_paint_warm_vs_baseline": statistics.median(warm) / statistics.median(base["hello"][1:]),
            "first_paint_warm_vs_grid_baseline": statistics.median(warm) / statistics.median(base["grid"][1:]),
            "first_paint_warm_median_s": statistics.median(warm),
            "filter_change_median_s": statistics.median(filters), "filter_change_max_s": max(filters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=5, help="warm browser sessions after the cold one")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if why := testing.missing_browser():
        sys.exit(f"cannot measure: {why}")
    with tempfile.TemporaryDirectory(prefix="lilnetx-dashboard-load-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        zoo = build_catalog(root, args.entries)
        build_s = time.perf_counter() - start
        names = [row["name"] for row in catalog.entry_rows(zoo.engine)]
        assert len(names) == args.entries
        reads = time_reads(zoo)
        with (testing.running_dashboard(f"sqlite:///{root / 'registry.db'}", root / "home") as url,
              baseline_app(root, "hello") as hello_url, baseline_app(root, "grid") as grid_url):
            browser = measure_browser(url, {"hello": hello_url, "grid": grid_url}, names, args.sessions)
    import streamlit

    result = {
        "entries": args.entries, "catalog_build_s": round(build_s, 2),
        "catalog_read": {k: round(v, 4) for k, v in reads.items()},
        "browser": {k: [round(x, 3) for x in v] if isinstance(v, list) else round(v, 3) for k, v in browser.items()},
        "targets": {"first_paint_s": FIRST_PAINT_TARGET_S, "filter_change_s": FILTER_TARGET_S,
                    "first_paint_warm_met": browser["first_paint_warm_median_s"] <= FIRST_PAINT_TARGET_S,
                    "first_paint_cold_met": browser["first_paint_cold_s"] <= FIRST_PAINT_TARGET_S,
                    "filter_change_met": browser["filter_change_median_s"] <= FILTER_TARGET_S},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "streamlit": streamlit.__version__, "browser": "Debian chromium (headless)"},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/dashboard_load.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
