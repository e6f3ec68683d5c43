"""Consumer bootstep: stamp the consumer's pulse from inside its own loop and transport."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.concurrency import solo
from celery.worker import state as worker_state
from vine import ensure_promise, promise

from .consumer_pulse import ConsumerPulse

__all__ = ("ConsumerWatch",)

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0
"""How often the consumer's event loop stamps its pulse."""


class ConsumerWatch(bootsteps.StartStopStep):
    """Stamps ``worker.consumer_pulse`` (made by the endpoint step) while the consumer runs.

    Ticks come from the consumer's event loop itself (a timer entry of the hub, or each turn
    of Celery's synloop where there is no hub: green pools, transports without asynchronous
    I/O), so a loop that blocks stops them; the solo pool's task, which runs inside the loop,
    is stamped as it begins and ends. Polls are stamped where the transport sends and reads
    them: Redis's BRPOP, SQS's ReceiveMessage. RabbitMQ pushes instead of being polled: a
    broker that stops answering there ends the connection when its heartbeats go missing
    (``broker_heartbeat``), which reads as disconnected. Started after the consumer
    connected, stopped when it disconnects or shuts down.
    """

    name = "circuitgate.consumer_watch"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._timer: Any = None
        self._undo_inline: Callable[[], None] | None = None

    def include_if(self, c: Any) -> bool:
        return getattr(c.controller, "consumer_pulse", None) is not None

    def start(self, c: Any) -> None:
        pulse: ConsumerPulse = c.controller.consumer_pulse
        each_tick = _stamp_polls(c.task_consumer.channel, pulse)

        def tick() -> None:
            active = list(worker_state.active_requests)
            starts = [r.time_start for r in active if r.time_start]
            pulse.tick(len(active), min(starts) if starts else None)
            if each_tick is not None:
                each_tick()

        if c.hub is not None:
            self._timer = c.timer.call_repeatedly(TICK_SECONDS, tick)
        else:  # no hub: the loop is Celery's synloop, which performs these each turn
            c.perform_pending_operations = _also(tick, type(c).perform_pending_operations, c)
        self._undo_inline = _stamp_inline_tasks(c.pool, pulse)
        pulse.connected()

    def stop(self, c: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._undo_inline is not None:
            self._undo_inline()
            self._undo_inline = None
        pulse: ConsumerPulse = c.controller.consumer_pulse
        # Stopped for a restart (the connection was lost) or for good (shutdown).
        pulse.disconnected(stopping=c.blueprint.state != bootsteps.RUN)

    shutdown = stop


def _stamp_inline_tasks(pool: Any, pulse: ConsumerPulse) -> Callable[[], None] | None:
    """The solo pool runs each task inside the consumer's loop, which neither ticks nor reads
    the broker's answers meanwhile: stamp the task's run; what undoes it, if stamped."""
    if not isinstance(pool, solo.TaskPool):
        return None
    on_apply = pool.on_apply

    def run_inline(*args: Any, **kwargs: Any) -> Any:
        pulse.task_began_inline()
        try:
            return on_apply(*args, **kwargs)
        finally:
            pulse.task_ended_inline()

    pool.on_apply = run_inline
    return lambda: setattr(pool, "on_apply", on_apply)


def _also(first: Callable[[], None], method: Callable[[Any], None], obj: Any) -> Callable[[], None]:
    def both() -> None:
        first()
        method(obj)

    return both


def _stamp_polls(channel: Any, pulse: ConsumerPulse) -> Callable[[], None] | None:
    """Wrap where ``channel``'s transport sends a poll and reads its answer, if it polls; what
    to look at on each tick, if anything."""
    if "BRPOP" in getattr(channel, "handlers", {}) and hasattr(channel, "_brpop_start"):  # Redis
        return _stamp_brpop(channel, pulse)
    if hasattr(channel, "_get_bulk_async"):  # SQS
        _stamp_receive(channel, pulse)
    return None


def _stamp_brpop(channel: Any, pulse: ConsumerPulse) -> Callable[[], None]:
    start, read = channel._brpop_start, channel.handlers["BRPOP"]

    def brpop_start(*args: Any, **kwargs: Any) -> Any:
        result = start(*args, **kwargs)
        if channel._in_poll:  # sent (no queue to poll sends nothing)
            pulse.asked("BRPOP", wait=channel.brpop_timeout)  # the server's wait, on purpose
        return result

    def brpop_read(**options: Any) -> Any:
        try:
            result = read(**options)
        except channel.connection_errors:
            raise  # unanswered: the poll goes again on a new connection
        except BaseException:  # Empty among them: the server answered nil
            pulse.answered("BRPOP")
            raise
        pulse.answered("BRPOP")
        return result

    def held() -> None:
        """kombu leaves a BRPOP's answer unread while the channel has no credit (a prefetch
        count lowered back as an ETA task began; an open circuit lets it be read, `gate`):
        the poll then waits on us, not on the broker, and on the broker again from when
        credit returns."""
        if channel._in_poll:
            # The gate's uncounted look: a tick is not a poll (circuitgate_gate_polls_total).
            has_credit = getattr(channel.qos, "circuitgate_has_credit", channel.qos.can_consume)
            if has_credit():
                # Keeps the first time if it was waiting already.
                pulse.asked("BRPOP", wait=channel.brpop_timeout)
            else:
                pulse.answered("BRPOP")

    channel._brpop_start = brpop_start
    channel.handlers["BRPOP"] = channel._brpop_read = brpop_read  # the poller reads by handler
    return held


def _stamp_receive(channel: Any, pulse: ConsumerPulse) -> None:
    get_bulk_async = channel._get_bulk_async

    def receive(queue: str, callback: Any = None) -> Any:
        pulse.asked(queue, wait=channel.wait_time_seconds)  # the long poll's, on purpose
        then = ensure_promise(callback)

        def on_answer(*args: Any, **kwargs: Any) -> Any:
            pulse.answered(queue)
            return then(*args, **kwargs)

        return get_bulk_async(queue, callback=promise(on_answer))

    channel._get_bulk_async = receive
