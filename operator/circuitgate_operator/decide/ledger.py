"""The trips of one policy's pods, per node: the edge-triggered memory that node decisions
need (a breaker's opening is seen once, at the time it happens), kept small and rebuilt after
a restart from the breakers that are still open."""

from __future__ import annotations

from ..clock import parse_time
from ..contract import BreakerState, Reading
from .nodes import Trip

__all__ = ("TripLedger",)

# A breaker that opened by itself (and may be half-open since); forced open is an admin's act.
_TRIPPED = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN})


class TripLedger:
    """Trips per node, one per (pod, openedAt), so re-reading the same open breaker (after a
    restart too) never counts it twice."""

    def __init__(self) -> None:
        self._trips: dict[str, dict[tuple[str, str], float]] = {}

    def observe(self, node: str, pod: str, reading: Reading, now: float) -> bool:
        """Record the opening a reading shows, if any; return whether it is a new one. An
        opening time in the future (a skewed clock) counts as now."""
        if reading.state not in _TRIPPED or not reading.opened_at:
            return False
        trips = self._trips.setdefault(node, {})
        if (pod, reading.opened_at) in trips:
            return False
        trips[(pod, reading.opened_at)] = min(parse_time(reading.opened_at) or now, now)
        return True

    def by_node(self, keep: float, now: float) -> dict[str, list[Trip]]:
        """Trips younger than keep seconds, oldest first (older ones are dropped for good)."""
        result: dict[str, list[Trip]] = {}
        for node, trips in list(self._trips.items()):
            for key, at in list(trips.items()):
                if at <= now - keep:
                    del trips[key]
            if not trips:
                del self._trips[node]
                continue
            result[node] = [
                Trip(pod, at) for (pod, _), at in sorted(trips.items(), key=lambda t: t[1])
            ]
        return result
