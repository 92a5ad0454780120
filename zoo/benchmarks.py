"""Benchmarks of zoo entries: run ``lilnetx.bench.benchmark`` on an entry, store and list the results.

Rows go to the catalog's ``benchmarks`` table (one per variant, batch size and thread count), with the
machine's description; ``list_results`` returns them newest first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.catalog import queries
from zoo.catalog.engine import run_write, session_scope

if TYPE_CHECKING:
    from torch import nn

    from zoo.service import Zoo

DEVICE = "cpu"


def _input_size(model: nn.Module, where: str) -> tuple[int, ...]:
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if not size:
        from lilnetx.bench import BenchmarkError

        raise BenchmarkError(f"{where} records no input size (pretrained_cfg['input_size']): call "
                             "lilnetx.bench.benchmark(model, input_size) with one")
    return tuple(int(v) for v in size)


def bench_file(path: str | Path, **options: Any) -> dict[str, Any]:
    """``benchmark`` of the model in the ``.lnx`` file ``path`` at its recorded input size."""
    import lilnetx
    from lilnetx.bench import benchmark

    model = lilnetx.load(path)
    return benchmark(model, _input_size(model, str(path)), **options)


def bench_entry(zoo: Zoo, name: str, **options: Any) -> dict[str, Any]:
    """Pull entry ``name`` (verified), load it and benchmark it; options are ``benchmark``'s keywords.

    The result is ``benchmark``'s dict plus ``"name"``.
    """
    return {"name": name, **bench_file(zoo.pull(name), **options)}


def machine_name(machine: dict[str, Any]) -> str:
    """A short machine label: CPU model and core count."""
    return f"{machine.get('cpu') or 'unknown CPU'} ({machine.get('cores') or '?'} cores)"[:256]


def store_results(zoo: Zoo, name: str, result: dict[str, Any]) -> int:
    """Write every row of ``result`` (from ``bench_entry``) to the catalog for entry ``name``; rows written."""
    machine = result["machine"]

    def work(session: Any) -> int:
        for row in result["results"]:
            queries.add_benchmark(session, name, machine=machine_name(machine), device=DEVICE,
                                  threads=row["threads"], batch=row["batch"], latencies_ms=row["latencies_ms"],
                                  variant=row["variant"], machine_info=machine)
        return len(result["results"])

    return run_write(zoo.engine, work)


def list_results(zoo: Zoo, name: str) -> list[dict[str, Any]]:
    """Stored benchmark rows of entry ``name``, newest first."""
    with session_scope(zoo.engine) as session:
        return [{"variant": r.variant, "batch": r.batch, "threads": r.threads, "median_ms": r.p50_ms,
                 "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "mean_ms": r.mean_ms, "machine": r.machine,
                 "machine_info": r.machine_info, "device": r.device,
                 "measured_at": r.measured_at.isoformat()} for r in queries.benchmarks(session, name)]
