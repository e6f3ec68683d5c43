"""Task execution under the breaker: admit, run, record, and hand failed work back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject

from .breaker import Admission, SharedCircuitBreaker
from .breaker_set import BreakerSet, queue_of

__all__ = ("DELIVERIES_HEADER", "deliveries", "guard")

logger = logging.getLogger(__name__)

DELIVERIES_HEADER = "circuitgate_deliveries"
"""How many times this message has been delivered and failed in a counted way."""


def deliveries(request: Any) -> int:
    """The delivery number of the message being executed (1 for a fresh message)."""
    headers = getattr(request, "headers", None) or {}
    value = headers.get(DELIVERIES_HEADER, getattr(request, DELIVERIES_HEADER, None))
    try:
        return max(int(value), 1) if value is not None else 1
    except (TypeError, ValueError):
        return 1


def guard(task: Task, breakers: BreakerSet) -> None:
    """Run ``task`` under the breaker of the queue each message comes from, from now on.

    Called in the worker's main process before the pool forks, so every child inherits
    the guarded task.
    """
    run = task.run

    @functools.wraps(run)
    def guarded_run(*args: Any, **kwargs: Any) -> Any:
        breaker = breakers.for_queue(queue_of(task.request.delivery_info))
        return _execute(task, breaker, run, args, kwargs)

    task.run = guarded_run
    # The guarantees below need the message unacknowledged until the task has finished.
    task.acks_late = True


def _execute(
    task: Task, breaker: SharedCircuitBreaker, run: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    request = task.request
    token = request.id or ""
    if breaker.admit(token) is Admission.REFUSE:
        raise Reject(f"circuit {breaker.name} is open; handing {token} back", requeue=True)
    try:
        result = run(*args, **kwargs)
    except BaseException as exc:
        if not breaker.counts(exc):
            breaker.record_success(token)
            raise
        delivery = deliveries(request)
        if delivery > breaker.settings.max_deliveries:
            # Poison: it failed on every worker that took it, so it says nothing about this one.
            breaker.release(token)
            logger.error(
                "task %s failed on %d deliveries; failing it for good without counting it",
                token,
                delivery,
            )
            raise
        breaker.record_failure(token, exc)
        if breaker.settings.handback:
            _hand_back(task, breaker, request, delivery, exc)
        raise
    breaker.record_success(token)
    return result


def _hand_back(
    task: Task, breaker: SharedCircuitBreaker, request: Any, delivery: int, exc: BaseException
) -> None:
    """Publish the message again for another worker, then drop this delivery.

    Like Celery's own ``retry()``: the copy keeps the task id and routing and carries the
    delivery count, then this delivery is acknowledged. The copy is published first, so a
    crash in between can duplicate the message but never lose it.
    """
    headers = dict(getattr(request, "headers", None) or {})
    headers[DELIVERIES_HEADER] = delivery + 1
    signature = task.signature_from_request(request, headers=headers)
    signature.apply_async()
    breaker.note_handed_back()
    logger.warning(
        "task %s failed (%r) on delivery %d; handed back to the queue", request.id, exc, delivery
    )
    raise Ignore() from exc
