"""Live benchmarks off the page: each run is its own process, reporting progress through a queue.

The page starts a :class:`BenchmarkJob` and polls it from a fragment, so the page stays responsive and
other sessions (each with its own job) are never blocked. The worker calls ``zoo.benchmarks.bench_entry``
for each chosen entry and stores the results in the catalog with ``zoo.benchmarks.store_results``.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import queue as queue_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

ENV_KEYS = ("LILNETX_DB", "LILNETX_HOME", "LILNETX_ZOO_URL", "LILNETX_OFFLINE", "LILNETX_DISABLE_PLUGIN_AUTOLOAD")
VARIANTS = ("dense", "slim", "sparse", "onnxruntime")


def available() -> bool:
    """Whether this installation has the benchmark functions (``zoo.benchmarks``)."""
    return importlib.util.find_spec("zoo.benchmarks") is not None


def _work(names: Sequence[str], options: Mapping[str, Any], env: Mapping[str, str], out: Any) -> None:
    """The worker process: benchmark each entry, store its rows, report progress / results / errors."""
    os.environ.update(env)
    try:
        from zoo import benchmarks
        from zoo.service import Zoo

        zoo = Zoo.from_env()
        for i, name in enumerate(names):
            def progress(fraction: float, message: str, i: int = i, name: str = name) -> None:
                out.put(("progress", (i + min(max(fraction, 0.0), 1.0)) / len(names), f"{name}: {message}"))

            progress(0.0, "loading the model")
            result = benchmarks.bench_entry(zoo, name, progress=progress, **options)
            stored = benchmarks.store_results(zoo, name, result)
            out.put(("result", name, result, stored))
    except Exception as exc:  # reported on the page as st.error; the worker must not die silently
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    out.put(("done",))


@dataclass
class BenchmarkJob:
    """A benchmark running in a child process. Call :meth:`poll` to collect what it reported so far."""

    names: list[str]
    options: dict[str, Any]
    fraction: float = 0.0
    message: str = "starting the benchmark process"
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    stored: int = 0
    error: str | None = None
    done: bool = False

    def __post_init__(self) -> None:
        ctx = mp.get_context("spawn")  # a clean interpreter: no Streamlit threads or torch state inherited
        self._queue = ctx.Queue()
        env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
        self._process = ctx.Process(target=_work, args=(self.names, self.options, env, self._queue), daemon=True)
        self._process.start()

    def poll(self) -> None:
        """Drain the progress queue; notice a worker that died without saying so."""
        while True:
            try:
                message = self._queue.get_nowait()
            except queue_module.Empty:
                break
            kind = message[0]
            if kind == "progress":
                self.fraction, self.message = message[1], message[2]
            elif kind == "result":
                self.results[message[1]] = message[2]
                self.stored += message[3]
            elif kind == "error":
                self.error = message[1]
            elif kind == "done":
                self.done, self.fraction = True, 1.0
        if not self.done and not self._process.is_alive():
            self._process.join(timeout=0)
            if self._queue.empty():
                self.done = True
                self.error = self.error or (f"the benchmark process stopped unexpectedly (exit code "
                                            f"{self._process.exitcode}); try fewer settings")

    def cancel(self) -> None:
        """Stop the worker; nothing it had not stored yet is kept."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self.done, self.error = True, self.error or "cancelled"


def results_frame(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (entry, variant, batch, threads) of ``bench_entry`` results, with speed-up vs dense."""
    rows = [{"name": name, "variant": r["variant"], "batch": r["batch"], "threads": r["threads"],
             "median_ms": r["median_ms"], "p90_ms": r.get("p90_ms"),
             "throughput_per_s": r.get("throughput_per_s"), "speedup_vs_dense": r.get("speedup_vs_dense")}
            for name, result in results.items() for r in result.get("results", [])]
    columns = ["name", "variant", "batch", "threads", "median_ms", "p90_ms", "throughput_per_s",
               "speedup_vs_dense"]
    return pd.DataFrame.from_records(rows, columns=columns)


def skipped(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"entry: variant — reason"`` for every variant a benchmark skipped."""
    return [f"{name}: {variant} — {reason}" for name, result in results.items()
            for variant, reason in (result.get("skipped") or {}).items()]


def history_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Earlier results from the catalog (``zoo.benchmarks.list_results``), newest first."""
    columns = ["measured_at", "variant", "batch", "threads", "median_ms", "p90_ms", "machine"]
    frame = pd.DataFrame.from_records([{c: r.get(c, r.get("p50_ms") if c == "median_ms" else None)
                                        for c in columns} for r in rows], columns=columns)
    frame["machine"] = frame["machine"].astype(str)
    return frame
