"""The generated tables of README.md and docs/ are what `benchmarks/readme_tables.py` renders from results."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)
PERFORMANCE = "docs/performance.md"


def _text(document: str) -> str:
    return (ROOT / document).read_text()


@pytest.mark.parametrize("document", list(readme_tables.DOCUMENTS))
def test_tables_match_results(document: str) -> None:
    text = _text(document)
    new, changed = readme_tables.regenerate(text, readme_tables.DOCUMENTS[document])
    assert not changed, f"{document} tables differ from benchmarks/results: {changed} " \
                        "(run: python benchmarks/readme_tables.py)"
    assert new == text


def test_every_table_has_one_document() -> None:
    placed = [name for names in readme_tables.DOCUMENTS.values() for name in names]
    assert sorted(placed) == sorted(readme_tables.TABLES)


def test_a_changed_figure_is_found_and_regenerated() -> None:
    text, names = _text(PERFORMANCE), readme_tables.DOCUMENTS[PERFORMANCE]
    table = readme_tables.render("load_time")
    tampered = text.replace(table, table.replace("1.00×", "0.99×"), 1)
    assert tampered != text
    new, changed = readme_tables.regenerate(tampered, names)
    assert changed == ["load_time"]
    assert new == text


def test_missing_or_foreign_marker_names_the_table() -> None:
    text, names = _text(PERFORMANCE), readme_tables.DOCUMENTS[PERFORMANCE]
    with pytest.raises(readme_tables.ReadmeTablesError, match="artifact_size"):
        readme_tables.regenerate(text.replace("<!-- generated: artifact_size -->", "", 1), names)
    with pytest.raises(readme_tables.ReadmeTablesError, match="not this document's \\['headline'\\]"):
        readme_tables.regenerate(text + "<!-- generated: headline -->\n<!-- /generated -->\n", names)
    with pytest.raises(readme_tables.ReadmeTablesError, match="unknown table 'nope'"):
        readme_tables.render("nope")


def test_missing_results_file_names_the_benchmark(tmp_path: Path) -> None:
    with pytest.raises(readme_tables.ReadmeTablesError, match="run benchmarks/train_overhead.py"):
        readme_tables.render("train_overhead_profile", tmp_path)
    with pytest.raises(readme_tables.ReadmeTablesError, match="run benchmarks/zoo_models.py"):
        readme_tables.render("headline", tmp_path)


def test_check_flag_exits_1_naming_the_table(tmp_path: Path) -> None:
    for document in readme_tables.DOCUMENTS:
        (tmp_path / document).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / document, tmp_path / document)
    performance = tmp_path / PERFORMANCE
    table = readme_tables.render("sparse_speed")
    performance.write_text(_text(PERFORMANCE).replace(table, table.replace("| layer |", "| layers |"), 1))
    script = [sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"), "--root", str(tmp_path)]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and f"{PERFORMANCE}: sparse_speed" in check.stderr
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    assert performance.read_text() == _text(PERFORMANCE)
