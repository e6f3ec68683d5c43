"""Celery remote-control commands for the breaker: inspect it, force it, give it back.

``celery -A app inspect circuit``, ``celery -A app control circuit_open`` (drain a worker
for maintenance), ``circuit_close`` and ``circuit_reset`` (back to automatic); all take
``--destination``. Registered when this module is imported, as Celery's own are.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, inspect_command

from .report import describe_worker
from .shared_state import State

__all__ = ("circuit", "circuit_close", "circuit_open", "circuit_reset")


def _breaker(state: Any) -> Any:
    return getattr(state.consumer.controller, "circuit_breaker", None)


def _queues(state: Any) -> list[str]:
    return sorted(state.consumer.app.amqp.queues.consume_from or ())


@inspect_command()  # type: ignore[untyped-decorator]
def circuit(state: Any) -> dict[str, Any]:
    """The worker's breaker document, as its endpoint serves it."""
    breaker = _breaker(state)
    if breaker is None:
        return {"error": "circuitgate is not enabled on this worker"}
    return describe_worker(state.consumer.hostname, [breaker], _queues(state)).to_json()


def _force(state: Any, forced: State | None) -> dict[str, Any]:
    breaker = _breaker(state)
    if breaker is None:
        return {"error": "circuitgate is not enabled on this worker"}
    breaker.force(forced)
    return {"ok": f"circuit {breaker.name} is {breaker.snapshot().state.name.lower()}"}


@control_command()  # type: ignore[untyped-decorator]
def circuit_open(state: Any) -> dict[str, Any]:
    """Hold the circuit open: fetch nothing, hand back what arrives, until circuit_reset."""
    return _force(state, State.FORCED_OPEN)


@control_command()  # type: ignore[untyped-decorator]
def circuit_close(state: Any) -> dict[str, Any]:
    """Hold the circuit closed: run everything and never trip, until circuit_reset."""
    return _force(state, State.FORCED_CLOSED)


@control_command()  # type: ignore[untyped-decorator]
def circuit_reset(state: Any) -> dict[str, Any]:
    """Give the circuit back to the rules, closed and with no history."""
    return _force(state, None)
