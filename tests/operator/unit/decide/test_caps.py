"""Caps and the storm threshold: exact integer arithmetic, never rounding past a cap."""

from __future__ import annotations

import pytest

from circuitgate_operator.decide.caps import apply_cap, cap_allows, resolve_cap, storm_reached


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (3, 10, 3),
        ("25%", 10, 2),
        ("25%", 3, 1),  # at least one of more than one: the example's 3 replicas
        ("25%", 1, 0),  # but never the only one
        ("1%", 2, 1),
        ("100%", 7, 7),
        ("0%", 7, 0),
        (0, 5, 0),
        ("x", 5, 0),
    ],
)
def test_a_cap_resolves_rounding_down_but_allows_one_of_several(
    value: int | str, total: int, expected: int
) -> None:
    assert resolve_cap(value, total) == expected


def test_the_action_about_to_be_taken_counts() -> None:
    assert cap_allows(2, 10, count_after=2)
    assert not cap_allows(2, 10, count_after=3)


def test_apply_cap_keeps_order_and_never_overshoots() -> None:
    allowed, held = apply_cap(["a", "b", "c", "d"], 3, 10, held=1)
    assert (allowed, held) == (["a", "b"], ["c", "d"])
    allowed, held = apply_cap(["a"], 3, 10, held=5)  # already past the cap: nothing more
    assert (allowed, held) == ([], ["a"])


@pytest.mark.parametrize(
    ("threshold", "total", "tripped", "storm"),
    [
        ("50%", 4, 2, True),
        ("50%", 4, 1, False),
        ("50%", 3, 2, True),  # 2/3 >= 50%
        ("50%", 3, 1, False),  # not rounded down to a threshold of 1
        (3, 10, 3, True),
        (3, 10, 2, False),
        ("50%", 0, 0, False),
    ],
)
def test_storm_is_at_or_above_the_threshold(
    threshold: int | str, total: int, tripped: int, storm: bool
) -> None:
    assert storm_reached(threshold, total, tripped) is storm
