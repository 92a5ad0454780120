"""The README's Python examples run as written (in a fresh working folder, catalog and cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(after_heading: str) -> str:
    """The first ```python block after ``after_heading``."""
    text = README.read_text().split(after_heading, 1)[1]
    return text.split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("heading", ["## Quick start", "## Python API (the method: `lilnetx`)"])
def test_readme_example_runs(heading: str, tmp_path: Path):
    env = {**os.environ, "LILNETX_HOME": str(tmp_path / "home"), "LILNETX_DB": f"sqlite:///{tmp_path / 'r.db'}"}
    env.pop("LILNETX_ZOO_URL", None)
    code = python_block(heading) + "\nprint('README example OK')\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "README example OK" in result.stdout
