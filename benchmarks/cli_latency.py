"""Wall time and peak memory of the listing commands, each a new process, against `python -c pass`.

    .venv/bin/python benchmarks/cli_latency.py [--rounds 15]

A catalog seeded with the shipped models (without measuring) in a temporary ``LILNETX_HOME`` is listed by
``lilnetx zoo list``, ``zoo show``, ``archs``, ``datasets`` and ``plugins``; commands are interleaved round by
round; the median wall time and the largest peak RSS (``ru_maxrss`` of the child) are written to
``benchmarks/results/cli_latency.json``, with whether torch was imported (``-X importtime``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "cli_latency.json"
LILNETX = str(Path(sys.executable).parent / "lilnetx")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "lilnetx zoo list": [LILNETX, "zoo", "list"],
    "lilnetx zoo show lenet5_caffe.mnist-lam3": [LILNETX, "zoo", "show", "lenet5_caffe.mnist-lam3"],
    "lilnetx archs": [LILNETX, "archs"],
    "lilnetx datasets": [LILNETX, "datasets"],
    "lilnetx plugins": [LILNETX, "plugins"],
}
TARGET_S, TARGET_MIB = 0.5, 100.0


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of ``command`` in a new process."""
    start = time.perf_counter()
    pid = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).pid
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return seconds, usage.ru_maxrss / 1024


def _imports_torch(command: list[str], env: dict[str, str]) -> bool:
    if command[0] != LILNETX:
        return False
    trace = subprocess.run([sys.executable, "-X", "importtime", "-m", "zoo.cli", *command[1:]], env=env,
                           capture_output=True, text=True, check=True).stderr
    return any(line.rstrip().endswith("| torch") for line in trace.splitlines())


def measure(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "LILNETX_HOME": f"{folder}/home", "LILNETX_DB": f"sqlite:///{folder}/registry.db",
               "LILNETX_MEASURE_TIMEOUT": "0"}
        env.pop("LILNETX_ZOO_URL", None)
        subprocess.run([LILNETX, "zoo", "seed"], env=env, capture_output=True, check=True)
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        peaks: dict[str, float] = dict.fromkeys(COMMANDS, 0.0)
        for _ in range(rounds):
            for name, command in COMMANDS.items():
                seconds, mib = _run(command, env)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], mib)
        torch_imported = {name: _imports_torch(command, env) for name, command in COMMANDS.items()}
    rows = [{"command": name, "median_s": statistics.median(times[name]), "max_s": max(times[name]),
             "peak_mib": peaks[name], "imports_torch": torch_imported[name],
             "met": statistics.median(times[name]) <= TARGET_S and peaks[name] <= TARGET_MIB} for name in COMMANDS]
    return {"rounds": rounds, "target_s": TARGET_S, "target_mib": TARGET_MIB, "rows": rows,
            "times_s": times, "load_average": os.getloadavg(),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}}


def table(result: dict) -> str:
    """The Markdown table of median wall time and peak memory per command, against the targets."""
    lines = [f"| command | median s | max s | peak MiB | imports torch | ≤ {result['target_s']:g} s and "
             f"≤ {result['target_mib']:g} MiB |", "|---|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        met = "–" if r["command"].startswith("python") else ("met" if r["met"] else "**missed**")
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['max_s']:.2f} | {r['peak_mib']:.0f} "
                     f"| {'yes' if r['imports_torch'] else 'no'} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--table", action="store_true", help="print the stored results' table and exit")
    args = parser.parse_args()
    if not args.table:
        RESULT.write_text(json.dumps(measure(args.rounds), indent=1) + "\n")
    print(table(json.loads(RESULT.read_text())))


if __name__ == "__main__":
    main()
