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
        self._counted: dict[str, int] = {}  # each pod's trip counter at its last reading

    def observe(self, node: str, pod: str, reading: Reading, now: float, *, limit: int) -> bool:
        """Record the opening a reading shows, if any; return whether it is a new one. An
        opening time in the future (a skewed clock) counts as now. Only the newest ``limit``
        openings of one pod on one node are kept (the trip threshold: one pod never needs
        more to cordon a node), so an endpoint reporting a new opening with every answer
        cannot grow the ledger.

        A watcher reads a few times a second at most, so a breaker may open (and close
        again) between two readings: the rise of its trip counter since the last reading
        says how many openings there were, and each counts, as of its openedAt when the
        reading shows it and as of now otherwise. With no earlier reading (our restart) or a
        counter that went back (the worker's), an open reading shows one."""
        before = self._counted.get(pod)
        if reading.reachable:
            self._counted[pod] = reading.trips
        rise = reading.trips - before if before is not None and reading.trips > before else 0
        trips = self._trips.setdefault(node, {})
        added = 0
        if (
            reading.state in _TRIPPED
            and reading.opened_at
            and (pod, reading.opened_at) not in trips
        ):
            at = min(parse_time(reading.opened_at) or now, now)
            trips[(pod, reading.opened_at)] = at
            stamp, added, unseen = reading.opened_at, 1, rise - 1
        else:
            at, stamp, unseen = now, f"counter {reading.trips}", rise
        for extra in range(min(unseen, limit)):
            trips[(pod, f"{stamp}#{extra}")] = at
            added += 1
        if not trips:
            del self._trips[node]
            return False
        _keep_newest(trips, pod, limit)
        return added > 0

    def note_outlier(self, node: str, pod: str, since: str, at: float, *, limit: int) -> None:
        """An outlier among its peers, counted as one trip of its pod as of ``at`` (when it
        became one), keyed by when its deviation began: seeing it again (after a restart
        too, from its CircuitState) never counts it twice. Kept as openings are."""
        trips = self._trips.setdefault(node, {})
        trips.setdefault((pod, f"outlier {since}"), at)
        _keep_newest(trips, pod, limit)

    def retain(self, pods: set[str]) -> None:
        """Forget the counters of pods no longer watched (their trips stay until they age)."""
        for pod in self._counted.keys() - pods:
            del self._counted[pod]

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


def _keep_newest(trips: dict[tuple[str, str], float], pod: str, limit: int) -> None:
    """Only the pod's newest ``limit`` trips on the node: one pod never needs more."""
    mine = sorted((at, key) for key, at in trips.items() if key[0] == pod)
    for _, key in mine[: max(len(mine) - limit, 0)]:
        del trips[key]
