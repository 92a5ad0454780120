"""Cold-start time of loading a zoo model vs importing torch, each in a fresh Python process.

    .venv/bin/python benchmarks/load_time.py [--rounds 15] [--name lenet5_caffe.mnist-lam20]
                                             [--out benchmarks/results/load_time.json]

Set-up: a temporary ``LILNETX_HOME`` / ``LILNETX_DB``, seeded from the shipped artifacts and the model pulled
once (so the timed runs find a seeded catalog and a warm store, as a user's second run would). Then, in
each round, ``python -c "import torch"`` and ``python -c "import zoo; zoo.load(NAME)"`` run as new processes,
in alternating order so drift of this noisy machine hits both alike. Reported: the median of each, their
ratio (target: at most 1.5), the heavy packages the load imported, and where its time goes
(``python -X importtime``, top-level imports by cumulative time).
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

import torch

TARGET_RATIO = 1.5
HEAVY = ("timm", "torchvision", "sklearn", "sympy", "pandas", "streamlit", "aiohttp", "fsspec", "alembic",
         "sqlalchemy")
SEED = "from zoo.seed import seed_shipped; from zoo.service import Zoo; seed_shipped(Zoo.from_env())"


def run(code: str, env: dict[str, str], *flags: str) -> tuple[float, str]:
    """Wall seconds of a fresh ``python -c code`` and its stderr; raises if it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"python -c {code!r} failed:\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def import_profile(code: str, env: dict[str, str], top: int = 12) -> list[dict[str, float | str]]:
    """Top-level imports of ``code`` by cumulative time (``-X importtime``)."""
    _, log = run(code, env, "-X", "importtime")
    rows = []
    for line in log.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith(" ") or name.startswith("   "):  # nested imports are counted by their parent
            continue
        rows.append({"module": name.strip(), "cumulative_s": round(int(cumulative) / 1e6, 3)})
    return sorted(rows, key=lambda r: -r["cumulative_s"])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--name", default="lenet5_caffe.mnist-lam20")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load_time.json"))
    args = parser.parse_args()

    load = f"import zoo; zoo.load({args.name!r})"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LILNETX_HOME": f"{tmp}/home", "LILNETX_DB": f"sqlite:///{tmp}/registry.db"}
        env.pop("LILNETX_ZOO_URL", None)
        run(SEED, env)
        run(load, env)  # first pull: copies the artifact into the store
        _, imported = run(f"import json, sys; {load}; print(json.dumps(sorted(sys.modules)))", env)
        heavy = sorted({m.split(".")[0] for m in json.loads(imported.strip().splitlines()[-1])} & set(HEAVY))
        times: dict[str, list[float]] = {"import_torch": [], "zoo_load": []}
        for i in range(args.rounds):
            cases = [("import_torch", "import torch"), ("zoo_load", load)]
            for key, code in cases if i % 2 == 0 else cases[::-1]:
                times[key].append(run(code, env)[0])
        profile = import_profile(load, env)

    medians = {key: statistics.median(values) for key, values in times.items()}
    ratio = medians["zoo_load"] / medians["import_torch"]
    result = {
        "command": f"python -c {load!r}", "baseline": "python -c 'import torch'", "rounds": args.rounds,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
        "heavy_packages_imported": heavy, "top_level_imports": profile,
        "times_s": {k: [round(v, 3) for v in values] for k, values in times.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"import torch {medians['import_torch']:.2f} s, zoo.load {medians['zoo_load']:.2f} s: ratio {ratio:.2f} "
          f"(target <= {TARGET_RATIO}); heavy imports: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
