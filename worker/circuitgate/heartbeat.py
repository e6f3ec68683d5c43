"""A thread that keeps a running half-open trial's claim alive while its task runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ("Heartbeat",)


class Heartbeat:
    """Call ``beat()`` every ``interval`` seconds until the block ends or ``beat`` says stop.

    A trial's claim has a deadline (``trial_timeout``) after which the breaker takes its
    owner for dead and lets another task try. A healthy task may run longer than that, so
    while it runs this thread pushes the deadline on; when the process dies the thread dies
    with it and the claim lapses. Not a liveness probe of the task itself: a task that hangs
    keeps its claim until Celery's time limits end it or ``beat`` says stop (the breaker's
    does after ``max_trial_seconds``).
    """

    def __init__(self, beat: Callable[[], bool], interval: float, *, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval) and self._beat():
            pass
