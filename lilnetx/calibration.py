"""Measured decisions, cached per machine: which form of a layer is faster here, and the timing helpers behind them.

A decision is measured once on the machine that runs the model and stored in ``$LILNETX_HOME/calibration.json``
(default ``~/.cache/lilnetx``) under a key its caller makes (:mod:`lilnetx.measured`: the machine, the kernels'
build, torch and the layer's signature and input configuration), so another CPU, kernel build or torch version
measures afresh. The file is written atomically; an unreadable one is ignored (and replaced on the next write),
never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lilnetx.files import atomic_file

MAX_ENTRIES = 20_000  # the oldest decisions go first beyond this


def home() -> Path:
    """``$LILNETX_HOME`` or ``~/.cache/lilnetx``: the cache and artifact store."""
    return Path(os.environ.get("LILNETX_HOME") or Path.home() / ".cache" / "lilnetx").expanduser()


def key(*parts: Any) -> str:
    """A stable short key for a tuple of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def interleaved_runs(calls: dict[str, Callable[[], Any]], *, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds of every timed call of each function, timed one call of each per round so that a noisy
    machine slows them alike (every figure is comparable only with the others of the same rounds). Each round
    starts one function later than the one before, so that no function always runs after the same other one (a
    call right after a call of the same model finds its weights in cache; one after another model does not)."""
    if not calls:
        return {}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_ms(calls: dict[str, Callable[[], Any]], *, rounds: int, warmup: int = 1,
                   statistic: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """One figure per function from :func:`interleaved_runs` (the median by default). ``statistic=min`` gives
    each call's undisturbed time: other work on the machine only adds to it."""
    times = interleaved_runs(calls, rounds=rounds, warmup=warmup)
    return {name: statistic(values) for name, values in times.items()}


def pick_fastest(calls: dict[str, Callable[[], Any]], reference: str, *, budget_ms: float, min_rounds: int,
                 max_rounds: int, warmup: int = 1, min_gain: float = 1.0) -> tuple[str, dict[str, float], int]:
    """The fastest of ``calls`` (each one's undisturbed time: the fastest of its rounds), unless it beats
    ``reference`` by less than ``min_gain``; with every call's milliseconds and the rounds timed. One probing
    round (after ``warmup`` calls each) sets how many rounds fit ``budget_ms``, within ``min_rounds``–``max_rounds``."""
    probe = interleaved_ms(calls, rounds=1, warmup=warmup)
    rounds = int(min(max_rounds, max(min_rounds, budget_ms / max(1e-3, sum(probe.values())))))
    ms = interleaved_ms(calls, rounds=rounds, warmup=0, statistic=min)
    fastest = min(ms, key=ms.__getitem__)
    return (fastest if ms[fastest] * min_gain <= ms[reference] else reference), ms, rounds


class DecisionCache:
    """Decisions (small JSON dicts) by key, in memory and in one JSON file."""

    def __init__(self, path: Path | None = None):
        self.path = path or home() / "calibration.json"
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text())
                entries = data.get("decisions") if isinstance(data, dict) else None
                self._entries = {k: v for k, v in (entries or {}).items() if isinstance(v, dict)}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._load().get(name)

    def put(self, name: str, decision: dict[str, Any]) -> None:
        """Store ``decision`` and rewrite the file (a failed write only loses the cache, never the result)."""
        with self._lock:
            entries = self._load()
            entries[name] = decision
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            try:
                with atomic_file(self.path, mode=0o644) as f:
                    f.write(json.dumps({"decisions": entries}, allow_nan=False).encode())
            except (OSError, ValueError):
                pass


_caches: dict[Path, DecisionCache] = {}


def cache() -> DecisionCache:
    """The process's cache for the current ``$LILNETX_HOME``."""
    path = home() / "calibration.json"
    return _caches.setdefault(path, DecisionCache(path))
