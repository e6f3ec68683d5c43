"""What the main process does when a guarded task ends where its child cannot report it."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, tzinfo
from typing import Any

from celery import Task
from celery.exceptions import Terminated, TimeLimitExceeded, WorkerLostError
from celery.utils.imports import symbol_by_name
from celery.worker import state as worker_state

from . import broker_deliveries
from .breaker import SharedCircuitBreaker
from .breaker_set import BreakerSet, queue_of, release_claim
from .requeue import reject_request_now, requeue_now
from .task_guard import (
    STOPPED,
    DeliveryRecord,
    delivery_name,
    hand_back,
    log_poison,
    refused_too_often,
)

__all__ = ("guard_outcomes_in_main",)

logger = logging.getLogger(__name__)


def guard_outcomes_in_main(task: Task, breakers: BreakerSet) -> None:
    """Give ``task`` a Request class that settles a lost child's message with the breaker.

    A child killed by SIGKILL (the OOM killer) or a segfault (a CUDA library) runs no
    ``except``: only the main process learns of it, as Celery's ``WorkerLostError``. A
    child ended on purpose (revoke with terminate, a hard time limit) is neutral: the
    trial it held is released, nothing is counted and nothing is published again. So is a
    message Celery discards before it runs (revoked, expired).
    """
    base: type[Any] = symbol_by_name(task.Request)

    class GuardedRequest(base):  # Celery ships no types: base is Any
        def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(message, *args, **kwargs)
            broker_deliveries.stamp(self._request_dict["delivery_info"], message)

        def on_failure(
            self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
        ) -> Any:
            exc = _unwrapped(exc_info.exception)
            breaker = breakers.for_queue(queue_of(self.delivery_info))
            # Revoked, cancelled on a connection loss, or killed by a cold shutdown: Celery
            # settles those messages itself (acked as revoked, or redelivered).
            ended_on_purpose = (
                self._already_revoked or self._already_cancelled or worker_state.should_terminate
            )
            lost = isinstance(exc, (WorkerLostError, *STOPPED)) and not ended_on_purpose
            if lost and not _success_was_stored(self):
                if _acknowledged_if_handed_back(self, breaker, exc):
                    return None
                if _stopped_with_its_worker():
                    _requeue_unjudged(self, breaker)
                    return None
                if _settled_lost_child(self, breaker, exc):
                    return None
            killed = lost or isinstance(exc, (Terminated, TimeLimitExceeded))
            if killed or ended_on_purpose:
                # A pool process killed mid-run never left `trial_running`: its run goes.
                breaker.release(self.id, killed_pid=self.worker_pid if killed else None)
            return super().on_failure(exc_info, send_failed_event, return_ok)

        def revoked(self) -> bool:
            # Discarded without running (revoked by id or by a stamped header after the gate
            # let it in, or expired): a trial claim it held goes with it, not after
            # trial_timeout.
            if not super().revoked():
                return False
            release_claim(breakers, self)
            return True

        def reject(self, requeue: bool = False) -> None:
            # Every requeue of a guarded task (refused in the pool, a copy the broker
            # refused, Celery's own paths) makes the message visible to others at once.
            if not requeue:
                super().reject(requeue)
                return
            celerys = functools.partial(super().reject, True)
            requeue_now(self.message, lambda: reject_request_now(self, celerys))

    GuardedRequest.__name__ = GuardedRequest.__qualname__ = f"Guarded{base.__name__}"
    task.Request = GuardedRequest


def _unwrapped(exc: BaseException) -> BaseException:
    """The exception itself: billiard wraps one raised in a child with its traceback."""
    inner = getattr(exc, "exc", None)
    return inner if hasattr(exc, "tb") and isinstance(inner, BaseException) else exc


def _success_was_stored(request: Any) -> bool:
    """The lost child had stored SUCCESS (it died in ``on_success``, a ``task_postrun``
    receiver or process cleanup): Celery 5.7+ acknowledges the message as succeeded, and
    it is not handed back. Older Celery has no such check; the message is handed back. A
    SUCCESS stored before this delivery started is another message's of the same id (sent
    again with it): this one is handed back."""
    check = getattr(request, "_success_was_stored", None)
    meta = check() if check is not None else None
    if not meta:
        return False
    done = _unix_time(meta.get("date_done"), request.task.app.timezone)
    started = request.time_start
    # Unknown times: handed back, which at worst runs it twice, rather than lose it.
    return done is not None and started is not None and done >= started


def _unix_time(value: Any, zone: tzinfo) -> float | None:
    """A result's ``date_done`` (a datetime or its ISO form) in Unix time. A naive one may be
    UTC (MongoDB) or the app's zone (the database backend): the earlier reading, so that in
    doubt the message is handed back (run twice at worst) rather than taken as done."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo:
        return value.timestamp()
    return min(value.replace(tzinfo=z).timestamp() for z in (UTC, zone))


def _acknowledged_if_handed_back(
    request: Any, breaker: SharedCircuitBreaker, exc: BaseException
) -> bool:
    """A child that had counted its failure and handed the message back before it died has
    done both already: the delivery is only acknowledged (True)."""
    context = request._context
    if not breaker.was_handed_back(delivery_name(context, DeliveryRecord.from_request(context))):
        return False
    logger.warning(
        "task %s was handed back before its pool process was lost (%r); acknowledged",
        request.id,
        exc,
    )
    worker_state.task_ready(request)
    request.acknowledge()
    return True


def _stopped_with_its_worker() -> bool:
    """Whether the worker is shutting down warm: a child lost now went with it (SIGTERM to
    the whole process group, as ``tini -g`` and ``dumb-init`` send it), a stop, not a fault.
    How the child ended does not tell (billiard reports it SIGTERMed or SIGKILLed alike), so
    a real fault in the drain goes uncounted too: the worker is on its way out anyway.
    (``should_stop`` is the exit code, 0 for a clean one: not a truth test.)"""
    return worker_state.should_stop is not None and worker_state.should_stop is not False


def _requeue_unjudged(request: Any, breaker: SharedCircuitBreaker) -> None:
    """Give the original message back, counted nowhere: no failure, no delivery on record
    (a task cut short by rollouts must never run out of deliveries and turn poison)."""
    breaker.release(request.id, killed_pid=request.worker_pid)
    logger.warning("task %s was stopped with its worker; requeued", request.id)
    worker_state.task_ready(request)
    request.reject(requeue=True)


def _settled_lost_child(request: Any, breaker: SharedCircuitBreaker, exc: BaseException) -> bool:
    """Count the lost child and hand its message back; False leaves it to Celery's path.

    A poison message (failed on enough workers already) fails as usual without counting.
    With hand-back on, the copy is published with the delivery record and the delivery
    acknowledged; a copy the broker refuses leaves the original to go back to the queue,
    unless the broker has delivered it too often already (then it fails as usual).
    """
    context = request._context
    record = DeliveryRecord.from_request(context)
    if record.is_poison(breaker.settings.max_deliveries):
        breaker.release(request.id, killed_pid=request.worker_pid)
        log_poison(request.id, record)
        return False
    breaker.record_failure(request.id, exc)
    if not breaker.settings.handback:
        return False
    published = hand_back(request.task, breaker, context, record, exc)
    if not published and refused_too_often(context, breaker.settings.max_deliveries):
        return False
    worker_state.task_ready(request)
    if published:
        request.acknowledge()
    else:
        request.reject(requeue=True)
    return True
