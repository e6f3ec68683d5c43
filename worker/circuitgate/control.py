"""Celery remote-control commands for the breaker: inspect it, force it, give it back.

``celery -A app inspect circuit``, ``celery -A app control circuit_open [breaker]`` (drain
a worker, or one breaker's queues, for maintenance), ``circuit_close`` and ``circuit_reset``
(back to automatic); all take ``--destination``. Registered when this module is imported,
as Celery's own are.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, inspect_command

from .breaker_set import BreakerSet
from .report import describe_worker
from .shared_state import State

__all__ = ("circuit", "circuit_close", "circuit_open", "circuit_reset")


def _breakers(state: Any) -> BreakerSet | None:
    breakers: BreakerSet | None = getattr(state.consumer.controller, "circuit_breakers", None)
    return breakers


def _queues(state: Any) -> list[str]:
    return sorted(state.consumer.app.amqp.queues.consume_from or ())


@inspect_command()  # type: ignore[untyped-decorator]
def circuit(state: Any) -> dict[str, Any]:
    """The worker's breaker document, as its endpoint serves it."""
    breakers = _breakers(state)
    if breakers is None:
        return {"error": "circuitgate is not enabled on this worker"}
    return describe_worker(state.consumer.hostname, breakers, _queues(state)).to_json()


def _force(state: Any, forced: State | None, breaker: str | None) -> dict[str, Any]:
    breakers = _breakers(state)
    if breakers is None:
        return {"error": "circuitgate is not enabled on this worker"}
    try:
        chosen = list(breakers) if breaker is None else [breakers.get(breaker)]
    except KeyError as exc:
        return {"error": str(exc.args[0])}
    for one in chosen:
        one.force(forced)
    states = ", ".join(f"{one.name} is {one.snapshot().state.name.lower()}" for one in chosen)
    return {"ok": f"circuit {states}"}


_BREAKER_ARG = {"args": [("breaker", str)], "signature": "[breaker]"}


@control_command(**_BREAKER_ARG)  # type: ignore[untyped-decorator]
def circuit_open(state: Any, breaker: str | None = None) -> dict[str, Any]:
    """Hold the circuit(s) open: fetch nothing, hand back what arrives, until circuit_reset."""
    return _force(state, State.FORCED_OPEN, breaker)


@control_command(**_BREAKER_ARG)  # type: ignore[untyped-decorator]
def circuit_close(state: Any, breaker: str | None = None) -> dict[str, Any]:
    """Hold the circuit(s) closed: run everything and never trip, until circuit_reset."""
    return _force(state, State.FORCED_CLOSED, breaker)


@control_command(**_BREAKER_ARG)  # type: ignore[untyped-decorator]
def circuit_reset(state: Any, breaker: str | None = None) -> dict[str, Any]:
    """Give the circuit(s) back to the rules, closed and with no history."""
    return _force(state, None, breaker)
