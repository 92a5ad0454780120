"""README benchmark tables are what `benchmarks/readme_tables.py` renders from benchmarks/results/*.json."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)
README = (ROOT / "README.md").read_text()


def test_readme_tables_match_results() -> None:
    new, changed = readme_tables.regenerate(README)
    assert not changed, f"README tables differ from benchmarks/results: {changed} (run: python benchmarks/readme_tables.py)"
    assert new == README


def test_every_table_is_marked_once_inside_benchmarks() -> None:
    section = README[README.index("## Benchmarks"):]
    section = section[:section.index("\n## ")]
    for name in readme_tables.TABLES:
        assert section.count(f"<!-- generated: {name} -->") == 1, name
        assert README.count(f"<!-- generated: {name} -->") == 1, name


def test_a_changed_figure_is_found_and_regenerated() -> None:
    table = readme_tables.render("load_time")
    tampered = README.replace(table, table.replace("1.00×", "0.99×"), 1)
    assert tampered != README
    new, changed = readme_tables.regenerate(tampered)
    assert changed == ["load_time"]
    assert new == README


def test_missing_marker_names_the_table() -> None:
    stripped = README.replace("<!-- generated: artifact_size -->", "", 1)
    with pytest.raises(readme_tables.ReadmeTablesError, match="artifact_size"):
        readme_tables.regenerate(stripped)
    with pytest.raises(readme_tables.ReadmeTablesError, match="unknown README table 'nope'"):
        readme_tables.render("nope")


def test_missing_results_file_names_the_benchmark(tmp_path: Path) -> None:
    with pytest.raises(readme_tables.ReadmeTablesError, match="run benchmarks/train_overhead.py"):
        readme_tables.render("train_overhead_profile", tmp_path)


def test_check_flag_exits_1_naming_the_table(tmp_path: Path) -> None:
    table = readme_tables.render("sparse_speed")
    readme = tmp_path / "README.md"
    readme.write_text(README.replace(table, table.replace("| layer |", "| layers |"), 1))
    script = [sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"), "--readme", str(readme)]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "sparse_speed" in check.stderr
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    assert readme.read_text() == README
