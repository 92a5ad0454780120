"""One percentage style everywhere (cards, CLI, dashboard, generated tables)."""

from __future__ import annotations

from zoo.formatting import percent


def test_percent_writes_a_fraction_with_a_spaced_sign() -> None:
    assert percent(0.9904) == "99.04 %"
    assert percent(0.057, 1) == "5.7 %"
    assert percent(1.0, 0) == "100 %"
    assert percent(0.0, 1) == "0.0 %"


def test_percent_of_nothing_says_so() -> None:
    assert percent(None) == "n/a"
    assert percent(None, 1, missing="—") == "—"
