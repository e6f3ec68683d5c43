"""Consumer bootstep: no fetching while the worker's circuit is open."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from .breaker import Admission, SharedCircuitBreaker
from .shared_state import State

__all__ = ("ConsumptionGate",)

logger = logging.getLogger(__name__)


class ConsumptionGate(bootsteps.StartStopStep):
    """Gates the task consumer's ``can_consume()`` on the worker's breaker.

    While the circuit is open the transport fetches nothing; when the open period ends it
    fetches one message, the half-open trial. A message that arrives anyway (prefetched
    before the trip, or a second one while the trial is out) goes straight back to the
    queue unexecuted. This step obeys the breaker; it decides nothing itself, and it is not
    a rate limiter. Works on kombu's virtual transports (SQS, Redis), which poll
    ``can_consume()`` before each fetch.
    """

    name = "circuitgate.gate"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, c: Any) -> bool:
        return getattr(c.controller, "circuit_breaker", None) is not None

    def start(self, c: Any) -> None:
        breaker: SharedCircuitBreaker = c.controller.circuit_breaker
        qos = getattr(c.task_consumer.channel, "qos", None)
        if qos is None or not hasattr(qos, "can_consume"):
            logger.warning(
                "circuitgate: transport %r has no can_consume(); an open circuit will hand "
                "messages back instead of stopping the fetch",
                c.connection.transport.driver_type,
            )
        else:
            _gate_qos(qos, breaker)
        for name in c.controller.circuit_guarded_tasks & c.strategies.keys():
            c.strategies[name] = _gate_strategy(c.strategies[name], breaker, c.connection_errors)


def _gate_qos(qos: Any, breaker: SharedCircuitBreaker) -> None:
    can_consume = qos.can_consume
    max_estimate = qos.can_consume_max_estimate
    fetch_allowed = breaker.fetch_allowed
    gate_view = breaker.shared.gate_view

    def gated_can_consume() -> bool:
        return fetch_allowed() and bool(can_consume())

    def gated_max_estimate() -> int | None:
        # Outside the closed state only the one trial message may come in (SQS fetches in
        # batches of up to ten otherwise).
        if gate_view()[0] is not State.CLOSED:
            return 1
        estimate: int | None = max_estimate()
        return estimate

    qos.can_consume = gated_can_consume
    qos.can_consume_max_estimate = gated_max_estimate


def _gate_strategy(
    strategy: Callable[..., Any],
    breaker: SharedCircuitBreaker,
    errors: tuple[type[BaseException], ...],
) -> Callable[..., Any]:
    def gated(message: Any, body: Any, ack: Any, reject: Any, *args: Any, **kwargs: Any) -> Any:
        headers = message.headers or {}
        token = headers.get("id") or (body or {}).get("id") or ""
        if breaker.admit(token) is Admission.REFUSE:
            # Back to the queue at once: on SQS visibility returns to 0, on Redis the
            # message is pushed back; it is not a failure and does not run here.
            message.reject_log_error(logger, errors, requeue=True)
            logger.info("circuit %s is open: handed %s back unexecuted", breaker.name, token)
            return None
        return strategy(message, body, ack, reject, *args, **kwargs)

    return gated
