"""Task-time evidence: a breaker's recent calls, summed up so a watcher can compare peers."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

from .contract import RecentCalls
from .shared_state import Call

__all__ = ("EvidenceClock", "percentile", "summarize")


def percentile(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of ``ordered`` (sorted, not empty): a value that was seen,
    to the microsecond (the log stores single-precision floats)."""
    return round(ordered[max(math.ceil(share * len(ordered)) - 1, 0)], 6)


def summarize(calls: Sequence[Call]) -> RecentCalls:
    """What ``calls`` say: how many, how many failed, and the successful ones' p50 and p90."""
    durations = sorted(c.seconds for c in calls if not c.failed and c.seconds is not None)
    return RecentCalls(
        calls=len(calls),
        failures=sum(c.failed for c in calls),
        p50_seconds=percentile(durations, 0.5) if durations else None,
        p90_seconds=percentile(durations, 0.9) if durations else None,
    )


class EvidenceClock:
    """How many times the evidence has moved, as the document's sequence counts it.

    A degraded worker's evidence moves with every task; counting each one would wake every
    watcher on every task. So a new call moves the count at most once per ``interval``
    seconds (never, with 0): watchers see evidence at most that old, and a quiet worker's
    document stays still. Cheap to ask often: one sum of the shared call counts, no more
    than once per ``interval``.
    """

    def __init__(
        self,
        calls_noted: Callable[[], int],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._calls_noted = calls_noted
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = calls_noted()
        self._next_look = clock() + interval
        self._moves = 0

    def moves(self) -> int:
        """Times the evidence has moved so far; never goes back."""
        if not self._interval or self._clock() < self._next_look:
            return self._moves
        with self._lock:
            now = self._clock()
            if now >= self._next_look:
                noted = self._calls_noted()
                if noted != self._seen:
                    self._seen = noted
                    self._moves += 1
                self._next_look = now + self._interval
            return self._moves
