"""The published snippet circuitgate is measured against, exactly as users copy it.

A pybreaker per pool process; a listener that, when that process's breaker opens, writes
a pause deadline into a ``multiprocessing.Value`` shared by the whole worker; a consumer
bootstep that gates the channel QoS's ``can_consume()`` on that deadline. It does stop
fetching while a circuit is open. What it leaves out is what circuitgate adds: each
process still counts and trips on its own, a message fetched while open fails instead of
going back to the queue, and nothing limits what comes in when the pause ends.

Kept as published, so the comparison is fair: do not improve it. Used by the lab app
with ``CIRCUITGATE_LAB_MODE=seed_snippet``.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pybreaker
from celery import Celery, bootsteps

__all__ = ("PauseConsuming", "PauseOnOpen", "install", "pause_until")

# Created at import, before the pool forks, so every child writes the same value.
pause_until = multiprocessing.Value("d", 0.0)


class PauseOnOpen(pybreaker.CircuitBreakerListener):
    """When the breaker opens, pause consuming for its reset timeout."""

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            pause_until.value = time.time() + cb.reset_timeout


class PauseConsuming(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery: untyped
    """Don't fetch new messages while the pause lasts."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        qos = c.task_consumer.channel.qos
        can_consume = qos.can_consume

        def gated_can_consume() -> bool:
            return time.time() >= pause_until.value and bool(can_consume())

        qos.can_consume = gated_can_consume


def install(
    app: Celery, *, fail_max: int = 5, reset_timeout: float = 60
) -> pybreaker.CircuitBreaker:
    """Add the gate to ``app``'s consumer; return the breaker the tasks call through."""
    app.steps["consumer"].add(PauseConsuming)
    return pybreaker.CircuitBreaker(
        fail_max=fail_max, reset_timeout=reset_timeout, listeners=[PauseOnOpen()]
    )
