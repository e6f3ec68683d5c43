"""Does the broker answer a fresh connection? Asked while the consumer's loop looks stuck.

A loop can be held inside a call to a broker that hangs: redis-py waits for an answer
forever, in the consumer's thread, to an ack or an event's publish. That loop is stuck, but
the fault is the broker's, and a restart would not bring it back, so liveness must not fail
for it. Bounding each call instead (redis-py's ``socket_timeout``) fails the ack, which kombu
then restores and another worker runs again, and a loop that makes such calls one after
another is held as long anyway. So the worker looks from outside the loop: while the loop
has missed ticks, a thread of its own connects to the broker as the consumer would (kombu's
channel asks something as it opens: Redis's PING, AMQP's handshake, SQS's ListQueues) once
a `BrokerCheck.interval`; a loop stuck while the broker answers is the worker's fault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery

__all__ = ("BrokerCheck", "connect_as_the_consumer")

logger = logging.getLogger(__name__)


def connect_as_the_consumer(app: Celery) -> Callable[[], None]:
    """A fresh connection to ``app``'s broker, opened and closed: raises if it fails."""

    def connect() -> None:
        with app.connection_for_read() as connection:
            connection.connect()

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

    def answered_lately(self) -> bool:
        """Whether the broker answered a connection within the last few intervals."""
        answered = self._answered_at
        return answered is not None and self._now() - answered <= 3 * self.interval

    def check(self) -> None:
        """One look, if wanted: connect, and stamp an answer."""
        if not self._wanted():
            return
        try:
            self._connect()
        except Exception as error:  # any failure: the broker did not answer
            logger.debug("circuitgate: the broker did not answer a connection: %r", error)
            return
        self._answered_at = self._now()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check()
