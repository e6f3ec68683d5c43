"""Consumer bootstep: no fetching while a circuit is open."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery import bootsteps
from celery.exceptions import InvalidTaskError
from celery.worker import state as worker_state
from kombu.entity import Queue
from kombu.exceptions import ContentDisallowed, DecodeError

from .breaker import Admission, SharedCircuitBreaker
from .breaker_set import CLAIMED_HERE, BreakerSet, queue_of
from .requeue import requeue_now
from .shared_state import token_of
from .shutdown_handback import hand_back_on_warm_shutdown

__all__ = ("CLAIMED_HERE", "ConsumptionGate", "QueuePauser")

DISCARDED = (InvalidTaskError, ContentDisallowed, DecodeError)
"""What Celery's consumer catches from a strategy, and then discards the message for
(``Consumer.create_task_handler``)."""

logger = logging.getLogger(__name__)


class ConsumptionGate(bootsteps.StartStopStep):
    """Stops the task consumer fetching from the queues whose circuit is open.

    One breaker for the whole worker on SQS or Redis: the channel's ``can_consume()``,
    polled before every fetch, asks the breaker (one shared-memory read). Breakers bound
    to some queues, or a transport without ``can_consume()`` (RabbitMQ): a `QueuePauser`
    cancels and resumes the consumer of those queues. Either way, when the open period
    ends one message comes in as the half-open trial, and a message that arrives anyway
    (prefetched before the trip, or racing the trial) goes straight back to the queue
    unexecuted. This step obeys the breakers; it decides nothing, and is not a rate limiter.
    """

    name = "circuitgate.gate"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.pauser: QueuePauser | None = None

    def include_if(self, c: Any) -> bool:
        return getattr(c.controller, "circuit_breakers", None) is not None

    def start(self, c: Any) -> None:
        breakers: BreakerSet = c.controller.circuit_breakers
        qos = getattr(c.task_consumer.channel, "qos", None)
        if breakers.per_queue or not hasattr(qos, "can_consume"):
            self.pauser = QueuePauser(c, breakers)
            self.pauser.start()
        else:
            _gate_qos(qos, breakers.default)
        hand_back_on_warm_shutdown(c, breakers)
        # A refusal means a circuit opened since the pauser last looked: pause at once, before
        # handing the message back, or RabbitMQ would deliver it straight back to us.
        on_refuse = self.pauser.tick if self.pauser is not None else None

        def gate_strategies() -> None:
            # With rate limits disabled Celery builds the buckets still, but no message waits.
            buckets = {} if c.disable_rate_limits else c.task_buckets
            for name in c.controller.circuit_guarded_tasks & c.strategies.keys():
                c.strategies[name] = _gate_strategy(
                    c.strategies[name],
                    breakers,
                    c.connection_errors,
                    on_refuse,
                    buckets=buckets,
                    task=name,
                )

        gate_strategies()
        # `celery control pool_restart` builds every strategy anew: gate the new ones too.
        rebuild = type(c).update_strategies

        def update_strategies() -> None:
            rebuild(c)
            gate_strategies()

        c.update_strategies = update_strategies

    def stop(self, c: Any) -> None:
        # A restart after a lost connection calls `update_strategies` before `start` gates
        # again: let it build plain strategies, or they would be gated twice.
        c.__dict__.pop("update_strategies", None)
        if self.pauser is not None:
            self.pauser.stop()
            self.pauser = None


class QueuePauser:
    """Cancels consuming from a queue while its breaker refuses fetches, and resumes it after.

    Checks every ``interval`` seconds on the consumer's own event loop, so the consumer is
    only ever touched from its thread. It looks at the queues consumed now (a queue added by
    ``add_consumer`` is gated too) and resumes only the queues it cancelled itself (a queue
    an admin cancelled stays cancelled).
    """

    def __init__(self, consumer: Any, breakers: BreakerSet, interval: float = 0.1) -> None:
        self.consumer = consumer
        self.breakers = breakers
        self.interval = interval
        self.paused: dict[str, Queue] = {}
        self._timer: Any = None

    def start(self) -> None:
        self.tick()
        self._timer = self.consumer.timer.call_repeatedly(self.interval, self.tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def tick(self) -> None:
        task_consumer = self.consumer.task_consumer
        for queue in list(task_consumer.queues):
            if not self.breakers.for_queue(queue.name).fetch_allowed():
                task_consumer.cancel_by_queue(queue.name)
                self.paused[queue.name] = queue
                logger.info("circuitgate: paused consuming from %s", queue.name)
        for name, queue in list(self.paused.items()):
            if self.breakers.for_queue(name).fetch_allowed():
                task_consumer.add_queue(queue)
                task_consumer.consume()
                del self.paused[name]
                logger.info("circuitgate: resumed consuming from %s", name)


def _gate_qos(qos: Any, breaker: SharedCircuitBreaker) -> None:
    can_consume = qos.can_consume
    max_estimate = qos.can_consume_max_estimate
    fetch_allowed, may_fetch = breaker.fetch_allowed, breaker.may_fetch
    flowing = breaker.flowing
    channel = qos.channel

    def reply_due() -> bool:
        """A Redis BRPOP is out: its reply may hold a message already popped from the list.
        kombu reads it only while the channel may consume, so a refusal would keep that
        message here for the whole open period; read, the gated strategy hands it back."""
        return bool(getattr(channel, "_in_poll", False))

    def gated_can_consume() -> bool:
        allowed = fetch_allowed()
        return (allowed or reply_due()) and bool(can_consume())

    def has_credit() -> bool:
        """The same answer, uncounted: for a look that is not the consumer's poll."""
        return (may_fetch() or reply_due()) and bool(can_consume())

    def gated_max_estimate() -> int | None:
        # Outside the closed state only the one trial message may come in (SQS fetches in
        # batches of up to ten otherwise).
        if not flowing():
            return 1
        estimate: int | None = max_estimate()
        return estimate

    qos.can_consume = gated_can_consume
    qos.circuitgate_has_credit = has_credit
    qos.can_consume_max_estimate = gated_max_estimate


def _gate_strategy(
    strategy: Callable[..., Any],
    breakers: BreakerSet,
    errors: tuple[type[BaseException], ...],
    on_refuse: Callable[[], None] | None,
    *,
    buckets: Mapping[str, Any],
    task: str,
) -> Callable[..., Any]:
    """``strategy`` of ``task`` behind the breakers. While ``buckets`` (Celery's, by task
    name) hold one for ``task``, its messages wait for a token: a rate limit can be set
    while the worker runs, so that is asked per message."""
    only = breakers.only

    @functools.wraps(strategy)
    def gated(message: Any, body: Any, ack: Any, reject: Any, *args: Any, **kwargs: Any) -> Any:
        breaker = only or breakers.for_queue(queue_of(message.delivery_info))
        if breaker.flowing():  # nearly every message: nothing to decide
            return strategy(message, body, ack, reject, *args, **kwargs)
        fields = _task_fields(message, body)
        token = token_of(fields.get("id"))
        claim = _runs_now(fields, token, rate_limited=buckets.get(task) is not None)
        admission, claimed = breaker.admit_delivery(token, claim=claim)
        if claimed:
            message.delivery_info[CLAIMED_HERE] = True
        if admission is Admission.REFUSE:
            if on_refuse is not None:
                on_refuse()
            # Back to the queue at once: on SQS visibility returns to 0, on Redis the
            # message is pushed back, on RabbitMQ it is requeued; not a failure, not run here.
            requeue_now(message, lambda: message.reject_log_error(logger, errors, requeue=True))
            logger.info("circuit %s is open: handed %s back unexecuted", breaker.name, token)
            return None
        try:
            return strategy(message, body, ack, reject, *args, **kwargs)
        except DISCARDED:
            # Celery's consumer discards a message its strategy cannot make a request of (a
            # protocol 1 body whose kwargs are no mapping): a trial this delivery claimed
            # goes with it. A claim another delivery of the same id holds stays its own.
            if claimed:
                breaker.release(token)
            raise

    return gated


def _task_fields(message: Any, body: Any) -> dict[str, Any]:
    """The task's fields where Celery's strategy reads them: the headers of a protocol 2
    message (``body`` None), else the body, a hybrid message's too (protocol 2 headers
    naming the task, and a protocol 1 body with the rest, its ETA included)."""
    if body is None:
        payload = message.payload
        if isinstance(payload, dict) and "args" in payload:
            return payload
        return message.headers or {}
    return body if isinstance(body, dict) else {}


def _runs_now(fields: dict[str, Any], token: str, *, rate_limited: bool) -> bool:
    """Whether the message goes to the pool now, so it may be claimed as the trial here.

    A message with an ETA or countdown waits in the worker's timer (as one of a rate-limited
    task waits for its token), and a message with an expiry or a revoked id may never run:
    none may hold the trial (and the worker paused) meanwhile. They are admitted without a
    claim; the child claims when one really runs.
    """
    waits = rate_limited or fields.get("eta") or fields.get("expires")
    return not (waits or token in worker_state.revoked)
