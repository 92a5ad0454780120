"""Live benchmarks off the page: each run is its own Python process, reporting progress line by line.

The page starts a :class:`BenchmarkJob` and polls it from a fragment, so the page stays responsive. One worker
runs per server at a time (:data:`dashboard.worker_queue.QUEUE`): a job waits in line, saying its place, until
the jobs ahead of it end, so timings never share the CPU with another benchmark. The worker (``python -m
dashboard.benchmark_worker``, spec as JSON on stdin) calls ``zoo.benchmarks.bench_entry`` for each chosen
entry, stores the results in the catalog with ``zoo.benchmarks.store_results`` and prints one JSON message
per line (prefixed, so stray prints from libraries are ignored); its standard error goes to the server's log.
"""

from __future__ import annotations

import json
import os
import queue as queue_module
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from dashboard.worker_queue import QUEUE

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "@@lilnetx-bench "
VARIANTS = ("dense", "slim", "sparse", "onnxruntime")


def _send(message: list[Any]) -> None:
    print(PREFIX + json.dumps(message, default=str), flush=True)


def work(names: Sequence[str], options: Mapping[str, Any], store: bool = True) -> None:
    """The worker: benchmark each entry, store its rows (``store``), report progress / results / errors on
    stdout."""
    try:
        from zoo import benchmarks
        from zoo.service import Zoo

        zoo = Zoo.from_env()
        for i, name in enumerate(names):
            def progress(fraction: float, message: str, i: int = i, name: str = name) -> None:
                _send(["progress", (i + min(max(fraction, 0.0), 1.0)) / len(names), f"{name}: {message}"])

            progress(0.0, "loading the model")
            result = benchmarks.bench_entry(zoo, name, progress=progress, **options)
            stored = benchmarks.store_results(zoo, name, result) if store else 0
            _send(["result", name, result, stored])
    except Exception as exc:  # reported on the page as st.error; the worker must not die silently
        _send(["error", f"{type(exc).__name__}: {exc}"])
    _send(["done"])


def _pump(stream: IO[str], out: queue_module.Queue) -> None:
    for line in stream:
        if line.startswith(PREFIX):
            out.put(json.loads(line[len(PREFIX):]))


@dataclass
class BenchmarkJob:
    """A benchmark running in a child process. Call :meth:`poll` to collect what it reported so far."""

    names: list[str]
    options: dict[str, Any]
    store: bool = True  # keep the results in the catalog (a read-only dashboard times without storing)
    fraction: float = 0.0
    message: str = "starting the benchmark process"
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    stored: int = 0
    error: str | None = None
    done: bool = False

    def __post_init__(self) -> None:
        self._ticket = QUEUE.join()
        self._process: subprocess.Popen | None = None
        self._queue: queue_module.Queue = queue_module.Queue()
        self._start_if_first()

    def _start_if_first(self) -> bool:
        """Start the worker when this job's turn has come; say the place in line otherwise."""
        place = QUEUE.place(self._ticket)
        if place is None:  # lost its place (not polled for a long time): back at the end of the line
            self._ticket = QUEUE.join()
            place = QUEUE.place(self._ticket)
        if place:
            self.message = f"waiting for {place} other benchmark{'s' if place > 1 else ''} on this server to finish"
            return False
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen([sys.executable, "-m", "dashboard.benchmark_worker"], env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        self._reader = threading.Thread(target=_pump, args=(self._process.stdout, self._queue), daemon=True)
        self._reader.start()
        self._process.stdin.write(json.dumps({"names": self.names, "options": self.options, "store": self.store}))
        self._process.stdin.close()
        self.message = "starting the benchmark process"
        return True

    def poll(self) -> None:
        """Take in what the worker reported; notice a worker that died without saying so."""
        if self.done:
            return
        if self._process is None and not self._start_if_first():
            return
        finished = not self._reader.is_alive()  # the worker's output is all read (it exited or closed stdout)
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
        if finished and not self.done:
            self._process.wait(timeout=10)
            self.done = True
            self.error = self.error or (f"the benchmark process stopped unexpectedly (exit code "
                                        f"{self._process.returncode}; its messages are in the server's log); "
                                        "try fewer settings")
        if self.done:
            QUEUE.leave(self._ticket)

    def cancel(self) -> None:
        """Stop the worker (or leave the line); results it had not stored yet are lost."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        QUEUE.leave(self._ticket)
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


def engines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"entry: b1 · t1 torchscript, b32 · t1 onnxruntime"``: the engine the sparse variant chose per setting."""
    return [f"{name}: " + ", ".join(f"{setting.replace('/', ' · ')} {chosen['engine']}"
                                    for setting, chosen in sorted(result["engines"].items()))
            for name, result in results.items() if result.get("engines")]


def layers_frame(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """What the sparse variant ran: per entry and convolution or linear layer, its share of zeros (K×K slices of a
    convolution, weights of a linear layer) and, per setting, the form (sparse / sparse-serial / dense / removed)
    with the kernel's measured speed-up over PyTorch's op."""
    rows = []
    for name, result in results.items():
        for layer in result.get("layers") or []:
            for setting, form in layer["forms"].items():
                rows.append({"name": name, "layer": layer["name"], "kernel": layer["kernel"],
                             "zeros": _zero_share(layer), "setting": setting.replace("/", " · "),
                             "form": form["form"], "kernel_speedup": form.get("speedup")})
    columns = ["name", "layer", "kernel", "zeros", "setting", "form", "kernel_speedup"]
    return pd.DataFrame.from_records(rows, columns=columns)


def _zero_share(layer: Mapping[str, Any]) -> float | None:
    share = layer.get("zero_slice_share")
    return share if share is not None else layer.get("zero_weight_share")


def history_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Earlier results from the catalog (``zoo.benchmarks.list_results``), newest first."""
    columns = ["measured_at", "variant", "batch", "threads", "median_ms", "p90_ms", "machine"]
    frame = pd.DataFrame.from_records([{c: r.get(c, r.get("p50_ms") if c == "median_ms" else None)
                                        for c in columns} for r in rows], columns=columns)
    frame["machine"] = frame["machine"].astype(str)
    frame["measured_at"] = pd.to_datetime(frame["measured_at"], utc=True)
    return frame


if __name__ == "__main__":
    spec = json.load(sys.stdin)
    work(spec["names"], spec["options"], bool(spec.get("store", True)))
