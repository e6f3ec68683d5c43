"""Task execution under the breaker: admit, run, record, and hand failed work back."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from .breaker import Admission, SharedCircuitBreaker, TrialTaken
from .breaker_set import BreakerSet, queue_of
from .broker_deliveries import BROKER_HEADERS, delivered_by_broker, delivery_tag
from .shared_state import token_of

__all__ = (
    "DELIVERIES_HEADER",
    "FAILED_ON_HEADER",
    "STOPPED",
    "DeliveryRecord",
    "delivery_name",
    "guard",
    "hand_back",
    "log_poison",
    "refused_too_often",
)

logger = logging.getLogger(__name__)

DELIVERIES_HEADER = "circuitgate_deliveries"
"""How many times this message has been delivered (1 for a fresh message)."""
FAILED_ON_HEADER = "circuitgate_failed_on"
"""The workers on which this message failed in a way that counted, oldest first."""
_FAILED_ON_KEPT = 32
_DELIVERY_CAP_FACTOR = 4


@dataclasses.dataclass(frozen=True)
class DeliveryRecord:
    """What the message's headers say about its earlier deliveries."""

    delivery: int = 1
    failed_on: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, request: Any) -> DeliveryRecord:
        """Read the headers; anything malformed reads as a fresh message."""
        headers = getattr(request, "headers", None) or {}
        try:
            delivery = max(int(headers.get(DELIVERIES_HEADER, 1)), 1)
        except (TypeError, ValueError):
            delivery = 1
        failed_on = headers.get(FAILED_ON_HEADER) or ()
        if not isinstance(failed_on, list | tuple):
            failed_on = ()
        return cls(delivery, tuple(str(worker) for worker in failed_on))

    def is_poison(self, max_workers: int) -> bool:
        """Failed on ``max_workers`` different workers already, or delivered far too often.

        Distinct workers, so a broken worker that takes back its own handed-back message
        never turns a healthy task into poison; the cap, so a one-worker pool stops too.
        """
        return (
            len(set(self.failed_on)) >= max_workers
            or self.delivery > _DELIVERY_CAP_FACTOR * max_workers
        )

    def after_failure_on(self, worker: str) -> dict[str, Any]:
        """The headers of the handed-back copy."""
        failed_on = [w for w in self.failed_on if w != worker] + [worker]
        return {
            DELIVERIES_HEADER: self.delivery + 1,
            FAILED_ON_HEADER: failed_on[-_FAILED_ON_KEPT:],
        }


def delivery_name(request: Any, record: DeliveryRecord) -> str:
    """This delivery of the message, as `hand_back` remembers it: the task id, the delivery
    number and the broker's tag (the same in the pool child and the main process). A
    redelivery of the same message may share it; another message of the same id does not."""
    return f"{request.id}\0{record.delivery}\0{delivery_tag(request)}"


def refused_too_often(request: Any, max_workers: int) -> bool:
    """Whether a delivery whose copy was just refused has come back as it came too often to
    go back again: by the broker's own count, past the delivery cap. It then fails for good
    (logged), rather than go round for ever; where the broker keeps no count it goes back."""
    count = delivered_by_broker(request)
    if count is None or count <= _DELIVERY_CAP_FACTOR * max_workers:
        return False
    logger.error(
        "task %s: its copy was refused and the broker has delivered it %d times; failing it"
        " for good",
        request.id,
        count,
    )
    return True


def guard(task: Task, breakers: BreakerSet) -> None:
    """Run ``task`` under the breaker of the queue each message comes from, from now on.

    Called in the worker's main process before the pool forks, so every child inherits
    the guarded task.
    """
    run = task.run
    only = breakers.only

    @functools.wraps(run)
    def guarded_run(*args: Any, **kwargs: Any) -> Any:
        breaker = only or breakers.for_queue(queue_of(task.request.delivery_info))
        return _execute(task, breaker, run, args, kwargs)

    task.run = guarded_run
    # The guarantees below need the message unacknowledged until the task has finished.
    task.acks_late = True


STOPPED: tuple[type[BaseException], ...] = (SystemExit, KeyboardInterrupt)
"""The child is being stopped (revoke with terminate, a hard time limit, a cold shutdown):
nothing about the worker's health, and the message is settled by Celery, not handed back."""


def _execute(
    task: Task, breaker: SharedCircuitBreaker, run: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    request = task.request
    token = token_of(request.id)
    if breaker.admit(token) is Admission.REFUSE:
        raise Reject(f"circuit {breaker.name} is open; handing {token} back", requeue=True)
    try:
        running = breaker.trial_running(token)
    except TrialTaken:  # a second delivery of the trial's id, admitted at the same moment
        raise Reject(f"trial {token} runs elsewhere; handing it back", requeue=True) from None
    started = breaker.clock()
    try:
        with running:
            result = run(*args, **kwargs)
    except BaseException as exc:
        if isinstance(exc, STOPPED) or not breaker.counts(exc):
            # Neutral: Retry, Reject, Ignore and excluded exceptions are not successes either.
            breaker.release(token)
            raise
        record = DeliveryRecord.from_request(request)
        if record.is_poison(breaker.settings.max_deliveries):
            breaker.release(token)
            log_poison(token, record)
            raise
        breaker.record_failure(token, exc, started=started)
        if breaker.settings.handback:
            if hand_back(task, breaker, request, record, exc):
                raise Ignore() from exc
            if refused_too_often(request, breaker.settings.max_deliveries):
                raise
            raise Reject(exc, requeue=True) from exc
        raise
    breaker.record_success(token, started=started)
    return result


def log_poison(token: str, record: DeliveryRecord) -> None:
    """Poison: it failed on every worker that took it, so it says nothing about this one."""
    logger.error(
        "task %s failed on %d workers in %d deliveries; failing it for good without counting it",
        token,
        len(set(record.failed_on)),
        record.delivery,
    )


@contextlib.contextmanager
def _publishing(app: Celery) -> Iterator[dict[str, Any]]:
    """How the copy is published (``apply_async`` options). Elsewhere than RabbitMQ: as
    usual, on the app's pooled producer, whose transports report a refusal as it happens.

    On RabbitMQ, RabbitMQ drops a publish unseen in two cases, and the delivery acknowledged
    after it would be lost: a refused one (a queue at its ``x-max-length`` with
    ``x-overflow: reject-publish``), and an unroutable one (sent to an exchange whose binding
    to the queue is gone). So the copy goes out on a connection of its own with publisher
    confirms (py-amqp raises ``MessageNacked``) and as mandatory (it raises on the return),
    tried once: a retry on the same channel (an app's ``retry_errors`` may include the
    return's ``ChannelError``) would take the first publish's ack, which py-amqp does not
    match by tag, for its own. A copy that fails goes back as it came.
    """
    with app.connection_for_write() as unopened:  # a transport's name needs no connecting
        rabbitmq = unopened.transport.driver_type == "amqp"
    if not rabbitmq:
        yield {}
        return
    # Celery adds the app's broker_transport_options under these.
    with app.connection_for_write(transport_options={"confirm_publish": True}) as confirmed:
        yield {"connection": confirmed, "mandatory": True, "retry": False}


def hand_back(
    task: Task,
    breaker: SharedCircuitBreaker,
    request: Any,
    record: DeliveryRecord,
    exc: BaseException,
) -> bool:
    """Publish the message again for another worker; False if the broker refused the copy.

    Like Celery's own ``retry()``: the copy keeps the task id and routing and carries the
    delivery record. The caller then drops this delivery once the copy is out (a crash in
    between can duplicate the message but never lose it), or gives it back to the queue as
    it came when the copy could not be published.
    """
    headers = dict(getattr(request, "headers", None) or {})
    for header in BROKER_HEADERS:
        headers.pop(header, None)
    headers.update(record.after_failure_on(request.hostname or "unknown"))
    try:
        with _publishing(task.app) as options:
            task.signature_from_request(request, headers=headers).apply_async(**options)
    except Exception as refused:
        logger.error(
            "task %s failed (%r) on delivery %d; its copy could not be published (%r), so"
            " its message goes back to the queue as it came",
            request.id,
            exc,
            record.delivery,
            refused,
        )
        return False
    breaker.note_handed_back(delivery_name(request, record))
    logger.warning(
        "task %s failed (%r) on delivery %d; handed back to the queue",
        request.id,
        exc,
        record.delivery,
    )
    return True
