"""What every command prints: aligned text tables for people, JSON for machines (``--json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[Sequence[Any]], right_align_from: int | None = None) -> list[str]:
    """``rows`` (the first is the header) as lines of columns two spaces apart, trailing spaces stripped.

    Columns from index ``right_align_from`` on are right-aligned (numbers); the others left-aligned.
    """
    cells = [[str(cell) for cell in row] for row in rows]
    if not cells:
        return []
    first_right = len(cells[0]) if right_align_from is None else right_align_from
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(cell.rjust(w) if i >= first_right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in cells]


def print_table(rows: Sequence[Sequence[Any]], right_align_from: int | None = None) -> None:
    """Print ``format_table(rows, right_align_from)``."""
    for line in format_table(rows, right_align_from):
        print(line)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (tuples become lists; non-JSON values are an error)."""
    print(json.dumps(data, indent=2, allow_nan=False))
