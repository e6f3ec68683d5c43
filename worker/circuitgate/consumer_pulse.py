"""The consumer's pulse, as the endpoint judges it: is the worker still taking work?

Celery has no readiness or liveness signal of its own (celery/celery#4079): ``celery inspect
ping`` costs a process and seconds, and fails when the only slot is busy. The main process
knows better. Its event loop ticks (`ConsumerPulse.tick`), each poll sent to the broker is
answered or not (`asked`, `answered`), and the connection is up or being re-made. From those
stamps: a worker is *stalled* when its loop has not ticked, or a poll has gone unanswered,
for ``stall_seconds`` past the wait the transport asks of it; it is *not live* only when its
loop itself is stuck while connected, never because a circuit is open, the pool is busy (the
solo pool's task runs inside the loop), or the broker is down (a restart would not bring the
broker back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ("ConsumerPulse", "ConsumerStatus", "PulseReading", "is_live", "judge")


STUCK_AFTER_SECONDS = 1.5
"""A loop that ticks each second and has not for this long missed a tick."""


class ConsumerStatus(StrEnum):
    """What the consumer is doing, as the document and ``/readyz`` name it."""

    STARTING = "starting"
    """Not connected to the broker yet."""
    CONSUMING = "consuming"
    PAUSED = "paused"
    """Connected and well, but every circuit refuses fetching: not polling, on purpose."""
    STALLED = "stalled"
    """The event loop has not ticked, or a broker poll has gone unanswered, too long."""
    DISCONNECTED = "disconnected"
    """The connection was lost; the consumer is re-making it."""
    STOPPING = "stopping"
    """Warm shutdown: no more fetching, the running tasks finish."""


@dataclass(frozen=True)
class PulseReading:
    """The stamps at one instant, as ages in seconds (None: never stamped)."""

    connection: ConsumerStatus
    """STARTING, CONSUMING (connected), DISCONNECTED or STOPPING."""
    tick_age: float | None
    unanswered_for: float | None
    """Age of the oldest poll still waiting for the broker's answer; None when none waits."""
    active_tasks: int
    oldest_task_seconds: float | None
    overdue_for: float | None = None
    """How long the most overdue poll has waited past the wait it asked for (a long poll's
    ``wait_time_seconds``); negative while every poll is within it; None when none waits."""
    inline_task_seconds: float | None = None
    """How long a task has run inside the loop itself (the solo pool); None when none does."""


def judge(reading: PulseReading, *, stall_seconds: float, paused: bool) -> ConsumerStatus:
    """The consumer's status from its stamps. Stalled wins over paused: a loop that does not
    tick cannot resume when the circuit closes, and an unanswered poll was sent while not
    paused. A task running inside the loop keeps it from ticking and from reading answers:
    busy, not stalled."""
    if reading.connection is not ConsumerStatus.CONSUMING:
        return reading.connection
    if reading.inline_task_seconds is None:
        if reading.tick_age is not None and reading.tick_age > stall_seconds:
            return ConsumerStatus.STALLED
        if reading.overdue_for is not None and reading.overdue_for > stall_seconds:
            return ConsumerStatus.STALLED
    return ConsumerStatus.PAUSED if paused else ConsumerStatus.CONSUMING


def is_live(reading: PulseReading, *, liveness_seconds: float) -> bool:
    """False only when the loop is stuck while connected, not running a task of its own:
    nothing else a restart would fix."""
    stuck = reading.tick_age is not None and reading.tick_age > liveness_seconds
    busy = reading.inline_task_seconds is not None
    return not (reading.connection is ConsumerStatus.CONSUMING and stuck and not busy)


class ConsumerPulse:
    """Stamps written from the consumer's thread, judged from the endpoint's (under a lock,
    taken about once a second by the writer).

    `changes` counts the changes of health seen (the status but for paused, which the
    breakers' own sequence covers), so the document's sequence moves when a worker stalls
    or recovers, and long-polls and streams hear of it.
    """

    def __init__(
        self,
        *,
        stall_seconds: float,
        liveness_seconds: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_seconds = stall_seconds
        self.liveness_seconds = liveness_seconds
        self._now = now
        self._lock = threading.Lock()
        self._connection = ConsumerStatus.STARTING
        self._ticked_at: float | None = None
        self._waiting: dict[Hashable, tuple[float, float]] = {}
        """Each poll waiting for the broker: when it was asked, and the wait it asked for."""
        self._inline_since: float | None = None
        self._stopping = False
        self._active_tasks = 0
        self._oldest_task_started: float | None = None
        self._health = ConsumerStatus.STARTING
        self._changes = 0

    def tick(self, active_tasks: int = 0, oldest_task_started: float | None = None) -> None:
        """The loop ran; ``oldest_task_started`` is the Unix time the oldest running task
        started at, None when none runs."""
        with self._lock:
            self._ticked_at = self._now()
            self._active_tasks = active_tasks
            self._oldest_task_started = oldest_task_started

    def asked(self, key: Hashable, *, wait: float = 0.0) -> None:
        """A poll went to the broker, which may hold it ``wait`` seconds before it answers (a
        long poll). A poll re-sent before any answer keeps its first time: a transport that
        drops and re-sends a poll that is never answered is still stalled."""
        with self._lock:
            self._waiting.setdefault(key, (self._now(), wait))

    def answered(self, key: Hashable) -> None:
        """The poll waits on the broker no more: answered (a message or an empty reply alike),
        or its answer is left unread on purpose while the channel has no credit."""
        with self._lock:
            self._waiting.pop(key, None)

    def task_began_inline(self) -> None:
        """A task runs inside the consumer's loop (the solo pool): busy, not stuck."""
        with self._lock:
            self._inline_since = self._now()

    def task_ended_inline(self) -> None:
        """The loop is back: it and the polls it could not read meanwhile count from now."""
        with self._lock:
            now = self._now()
            self._inline_since = None
            self._ticked_at = now
            self._waiting = {key: (now, wait) for key, (_, wait) in self._waiting.items()}

    def connected(self) -> None:
        """The consumer is connected and about to consume: the loop counts from now."""
        with self._lock:
            self._connection = ConsumerStatus.CONSUMING
            self._ticked_at = self._now()
            self._waiting.clear()

    def disconnected(self, *, stopping: bool) -> None:
        """The consumer stopped consuming: to reconnect, or (``stopping``) for good."""
        with self._lock:
            self._connection = ConsumerStatus.STOPPING if stopping else ConsumerStatus.DISCONNECTED
            self._waiting.clear()

    def stopping(self) -> None:
        """The worker began its shutdown: stopping from now to the end, whatever follows.
        Takes no lock: Celery calls it from a signal handler, maybe while the loop holds it."""
        self._stopping = True

    def read(self) -> PulseReading:
        """The stamps now, as ages."""
        with self._lock:
            return self._read()

    def status(self, *, paused: bool) -> ConsumerStatus:
        """The consumer's status now; ``paused``: every circuit refuses fetching."""
        with self._lock:
            return judge(self._read(), stall_seconds=self.stall_seconds, paused=paused)

    def live(self) -> bool:
        with self._lock:
            return is_live(self._read(), liveness_seconds=self.liveness_seconds)

    def looks_stuck(self) -> bool:
        """The loop missed a tick while connected and running no task of its own: time to
        ask whether the broker answers (`circuitgate.broker_check`)."""
        with self._lock:
            reading = self._read()
        return (
            reading.connection is ConsumerStatus.CONSUMING
            and reading.inline_task_seconds is None
            and reading.tick_age is not None
            and reading.tick_age > STUCK_AFTER_SECONDS
        )

    def changes(self) -> int:
        """How many changes of health have been seen, this look included."""
        with self._lock:
            health = judge(self._read(), stall_seconds=self.stall_seconds, paused=False)
            if health is not self._health:
                self._health = health
                self._changes += 1
            return self._changes

    def _read(self) -> PulseReading:
        now = self._now()
        asked = [since for since, _ in self._waiting.values()]
        due = [since + wait for since, wait in self._waiting.values()]
        inline = None if self._inline_since is None else now - self._inline_since
        oldest = self._oldest_task_started
        oldest_seconds = None if oldest is None else max(time.time() - oldest, 0.0)
        if inline is not None:  # the loop has not ticked since the task began
            oldest_seconds = max(oldest_seconds or 0.0, inline)
        return PulseReading(
            connection=ConsumerStatus.STOPPING if self._stopping else self._connection,
            tick_age=None if self._ticked_at is None else now - self._ticked_at,
            unanswered_for=now - min(asked) if asked else None,
            active_tasks=max(self._active_tasks, 1) if inline is not None else self._active_tasks,
            oldest_task_seconds=oldest_seconds,
            overdue_for=now - min(due) if due else None,
            inline_task_seconds=inline,
        )
