"""Safety caps (count or percentage) and the storm threshold, in exact integer arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ("Cap", "apply_cap", "cap_allows", "resolve_cap", "storm_reached")

T = TypeVar("T")


def _percent(value: int | str) -> int | None:
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return int(value[:-1])
    return None


def resolve_cap(value: int | str, total: int) -> int:
    """The most objects a cap allows out of total. A percentage rounds down, so the cap is
    never exceeded by rounding, except that a percentage above 0 of more than one object
    allows at least one: "25%" of 3 replicas must still let one be gated. A malformed value
    allows nothing."""
    percent = _percent(value)
    if percent is not None:
        floor = 1 if percent > 0 and total > 1 else 0
        return max((percent * total) // 100, floor)
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def cap_allows(value: int | str, total: int, count_after: int) -> bool:
    """Whether holding count_after objects (the action about to be taken included) is within
    the cap."""
    return count_after <= resolve_cap(value, total)


def apply_cap(
    candidates: Sequence[T], value: int | str, total: int, held: int
) -> tuple[list[T], list[T]]:
    """Split candidates (in priority order) into those the cap allows on top of the ``held``
    objects already counted, and those it holds back."""
    room = max(resolve_cap(value, total) - held, 0)
    return list(candidates[:room]), list(candidates[room:])


def storm_reached(threshold: int | str, total: int, tripped: int) -> bool:
    """At or above the threshold, trips point to a shared cause. A percentage compares exactly
    (3 of 5 is at 60%, not rounded), and no count below 1 ever counts as a storm."""
    if tripped < 1:
        return False
    percent = _percent(threshold)
    if percent is not None:
        return total > 0 and tripped * 100 >= percent * total
    if isinstance(threshold, int):
        return tripped >= max(threshold, 1)
    if isinstance(threshold, str) and threshold.isdigit():
        return tripped >= max(int(threshold), 1)
    return False


@dataclass(frozen=True)
class Cap:
    """One safety cap as it stands: its value (count or percentage) of ``total`` objects, with
    ``held`` objects already held (counted before acting, so it is never overshot)."""

    value: int | str
    total: int
    held: int

    def split(self, candidates: Sequence[T]) -> tuple[list[T], list[T]]:
        """Candidates in priority order: those it allows, and those it holds back."""
        return apply_cap(candidates, self.value, self.total, self.held)
