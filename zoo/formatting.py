"""One way to write a fraction as a percentage, for every surface: model cards, the CLI, the dashboard and the
generated README / docs tables."""

from __future__ import annotations


def percent(fraction: float | None, digits: int = 2, *, missing: str = "n/a") -> str:
    """``fraction`` (0.9904) as a percentage with ``digits`` decimals and a spaced sign ("99.04 %"); ``missing``
    for ``None``."""
    return missing if fraction is None else f"{100 * fraction:.{digits}f} %"
