"""The listing commands answer from the catalog and the plugin registry without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.service import Zoo

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "zoo_artifacts"

CHECK = """
import runpy, sys
sys.argv = ["lilnetx", *sys.argv[1:]]
try:
    runpy.run_module("zoo.cli", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
heavy = sorted(m for m in ("torch", "timm", "torchvision", "sklearn", "alembic") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _run(env: Path, *argv: str) -> tuple[str, list[str]]:
    """stdout of ``lilnetx ARGV`` in a new process, and the heavy packages that process imported."""
    result = subprocess.run([sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    out, _, heavy = result.stdout.rpartition("HEAVY=")
    return out, [h for h in heavy.strip().split(",") if h]


@pytest.fixture
def catalog(env: Path) -> Path:
    """The isolated zoo holding one shipped model (added without measuring)."""
    Zoo.from_env().add(SHIPPED / "lenet5_caffe.mnist-lam3.lnx", "mnist-lam3")
    return env


@pytest.mark.parametrize("argv", [("zoo", "list", "--json"), ("zoo", "show", "lenet5_caffe.mnist-lam3", "--json"),
                                  ("archs", "--json"), ("datasets", "--json"), ("plugins", "--json")])
def test_listing_imports_no_torch(catalog: Path, argv: tuple[str, ...]) -> None:
    out, heavy = _run(catalog, *argv)
    assert heavy == [], f"lilnetx {' '.join(argv)} imported {heavy}"
    assert json.loads(out), "it printed something"


def test_the_check_sees_torch_where_a_command_needs_it(catalog: Path) -> None:
    _, heavy = _run(catalog, "inspect", str(SHIPPED / "lenet5_caffe.mnist-lam3.lnx"))
    assert "torch" in heavy
