"""Record what a lab worker does as `Event` lines, from public hooks only.

Celery's signals say when the worker is ready, when a message got past the consumer
(``task_received``) and how each execution ended (``task_postrun`` and its ``state``); a
pybreaker listener says when a circuit changes state and which failures it counted. A
listener added before the pool forks is inherited by every child, so transitions are
recorded in whichever process makes them.
"""

from __future__ import annotations

import os
from typing import Any

import pybreaker
from celery import bootsteps, signals

from circuitgate import SharedCircuitBreaker

from .records import append_record

__all__ = ("EVENTS_ENV", "CircuitRecorder", "RecorderStep", "record_worker")

EVENTS_ENV = "CIRCUITGATE_LAB_EVENTS"
"""The path of the worker's event log."""


def _state_name(state: pybreaker.CircuitBreakerState | None) -> str | None:
    return None if state is None else state.name.replace("-", "_")


class CircuitRecorder(pybreaker.CircuitBreakerListener):
    """Records a breaker's transitions and counted failures, circuitgate's or a plain one."""

    def __init__(self, path: str) -> None:
        self.path = path

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        append_record(
            self.path,
            kind="transition",
            old=_state_name(old_state),
            new=_state_name(new_state),
            **self._counters(cb),
        )

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        append_record(self.path, kind="counted_failure", **self._counters(cb))

    @staticmethod
    def _counters(cb: pybreaker.CircuitBreaker) -> dict[str, Any]:
        name = cb.name or "breaker"
        if not isinstance(cb, SharedCircuitBreaker):  # one process's own circuit
            return {"circuit": f"{name}/{os.getpid()}", "failures": cb.fail_counter}
        snapshot = cb.snapshot()
        return {
            "circuit": name,
            "failures": snapshot.fail_counter,
            "trips": snapshot.trips,
            "refused": snapshot.refused_total,
        }


class RecorderStep(bootsteps.Step):  # type: ignore[misc]  # Celery ships no types
    """Adds a `CircuitRecorder` to every breaker circuitgate made, before the pool forks.

    Reads the log's path from ``CIRCUITGATE_LAB_EVENTS``; records nothing without it.
    """

    name = "lab.recorder"
    requires = ("circuitgate.breaker_step:BreakerStep",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        path = os.environ.get(EVENTS_ENV)
        if path and parent.circuit_breakers is not None:
            for breaker in parent.circuit_breakers:
                breaker.add_listener(CircuitRecorder(path))


def record_worker(path: str, *, tasks: bool = True) -> None:
    """Record the worker's readiness and, with ``tasks``, every message and execution."""

    def ready(**_: Any) -> None:
        append_record(path, kind="ready")

    def received(request: Any, **_: Any) -> None:
        append_record(path, kind="received", task_id=request.id)

    def started(task_id: str, **_: Any) -> None:
        append_record(path, kind="started", task_id=task_id)

    def finished(task_id: str, state: str, **_: Any) -> None:
        append_record(path, kind="finished", task_id=task_id, state=state)

    signals.worker_ready.connect(ready, weak=False)
    if tasks:
        signals.task_received.connect(received, weak=False)
        signals.task_prerun.connect(started, weak=False)
        signals.task_postrun.connect(finished, weak=False)
