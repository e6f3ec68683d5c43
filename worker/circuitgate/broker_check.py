"""Does the broker answer a fresh connection? Asked while the consumer's loop looks stuck.

A loop can be held inside a call to a broker that hangs: redis-py waits for an answer
forever, in the consumer's thread, to an ack or an event's publish. That loop is stuck, but
the fault is the broker's, and a restart would not bring it back, so liveness must not fail
for it. Bounding each call instead (redis-py's ``socket_timeout``) fails the ack, which kombu
then restores and another worker runs again, and a loop that makes such calls one after
another is held as long anyway. So the worker looks from outside the loop: while the loop
has missed ticks, a thread of its own connects to the broker as the consumer would (kombu's
channel asks something as it opens: Redis's PING, AMQP's handshake, SQS's ListQueues; on
Redis a write too, which a paused or failing-over primary holds while it answers PING) once
a `BrokerCheck.interval`. A prompt answer, even an error (no more clients, a rotated
password), is a live broker; a loop stuck while the broker answers is the worker's fault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery

from .consumer_pulse import ConsumerPulse, is_live

__all__ = ("BrokerCheck", "Liveness", "connect_as_the_consumer")

logger = logging.getLogger(__name__)

CHECK_KEY = "circuitgate:broker-check"
"""The Redis key the check writes, expiring within seconds."""


def connect_as_the_consumer(app: Celery) -> Callable[[], None]:
    """A fresh connection to ``app``'s broker, opened (one retry, at once) and closed; on
    Redis a short-lived key written too. Raises if any of it fails."""

    def connect() -> None:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            if connection.transport.driver_type == "redis":
                connection.default_channel.client.set(CHECK_KEY, 1, px=5000)

    return connect


class BrokerCheck:
    """Connects while ``wanted()`` (the loop looks stuck), once an ``interval``, in a daemon
    thread: a connection to a hung broker holds only that thread."""

    def __init__(
        self,
        connect: Callable[[], None],
        wanted: Callable[[], bool],
        *,
        interval: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._connect = connect
        self._wanted = wanted
        self._now = now
        self._answered_at: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="circuitgate-broker-check", daemon=True
        )

    def answered_within(self, seconds: float) -> bool:
        """Whether the broker answered a connection within the last ``seconds`` (and within
        the last few intervals)."""
        answered = self._answered_at
        return answered is not None and self._now() - answered <= min(seconds, 3 * self.interval)

    def check(self) -> None:
        """One look, if wanted: connect, and stamp an answer if one came within two
        intervals, an error reply too; a timeout is no answer."""
        if not self._wanted():
            return
        began = self._now()
        try:
            self._connect()
        except Exception as error:
            logger.debug("circuitgate: the broker's answer to a connection: %r", error)
            if isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:
                return  # redis-py's and kombu's timeouts are not all TimeoutError
        if self._now() - began <= 2 * self.interval:
            self._answered_at = self._now()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check()


class Liveness:
    """``/healthz``'s verdict: not live once the pulse says the loop is stuck and the broker
    answered during that stall, and so until the loop ticks again (a broker that freezes
    later does not hide the worker's own fault)."""

    def __init__(self, pulse: ConsumerPulse, broker: BrokerCheck) -> None:
        self.pulse = pulse
        self.broker = broker
        self._stuck = False

    def __call__(self) -> bool:
        reading = self.pulse.read()  # one look: the verdict and the stall's length agree
        if is_live(reading, liveness_seconds=self.pulse.liveness_seconds):
            self._stuck = False
            return True
        assert reading.tick_age is not None  # not live: the loop has ticked, and not since
        self._stuck = self._stuck or self.broker.answered_within(reading.tick_age)
        return not self._stuck
