"""``zoo.cli.output``: the one table printer and JSON printer of every command."""

from __future__ import annotations

import json

import pytest

from zoo.cli.output import format_table, print_json, print_table


def test_table_columns_are_aligned_numbers_right(capsys: pytest.CaptureFixture[str]):
    print_table([("name", "bytes"), ("a", "1,234"), ("longer", 5)], right_align_from=1)
    assert capsys.readouterr().out.splitlines() == ["name    bytes", "a       1,234", "longer      5"]


def test_table_left_aligned_by_default_without_trailing_spaces():
    assert format_table([("a", "b"), ("long", "")]) == ["a     b", "long"]
    assert format_table([]) == []


def test_json_is_parseable_and_keeps_key_order(capsys: pytest.CaptureFixture[str]):
    print_json({"b": (1, 2), "a": None})
    out = capsys.readouterr().out
    assert json.loads(out) == {"b": [1, 2], "a": None} and out.index('"b"') < out.index('"a"')
