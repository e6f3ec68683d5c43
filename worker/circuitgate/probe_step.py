"""Consumer bootstep: run a breaker's probe when its open period ends, before the trial."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from .breaker import SharedCircuitBreaker, failure_message
from .breaker_set import BreakerSet

__all__ = ("PROBE_TICK_SECONDS", "ProbeStep", "run_probe")

logger = logging.getLogger(__name__)

PROBE_TICK_SECONDS = 0.25
"""How often the consumer looks for a probe that is due, or overdue."""

ProbeOutcome = tuple[bool, str]


def run_probe(probe: Callable[[], object]) -> ProbeOutcome:
    """Run ``probe`` (in a pool process): whether it passed, and what it said if it did not.
    A failure is an answer, not an error: the solo pool would raise an error into the
    consumer's loop."""
    try:
        passed = probe() is not False
    except Exception as exc:
        return False, f"{type(exc).__name__}: {failure_message(exc)}"
    return passed, "" if passed else "returned False"


class ProbeStep(bootsteps.StartStopStep):
    """Probes each breaker that has one (``circuitgate_probe``) once its open period is over.

    While the probe runs the breaker keeps refusing: nothing is fetched. It runs in a pool
    process (where a task would run, so a CUDA probe sees the device as a task does), when
    one is free (a pool busy with long tasks could not run the trial either), with the
    pool's hard time limit at ``probe_timeout``; past that it failed, whatever comes later.
    A pass lets the half-open trial in; a failure opens the circuit for another period.
    """

    name = "circuitgate.probe"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._timer: Any = None

    def include_if(self, c: Any) -> bool:
        breakers: BreakerSet | None = getattr(c.controller, "circuit_breakers", None)
        return breakers is not None and any(b.settings.probe is not None for b in breakers)

    def start(self, c: Any) -> None:
        breakers: BreakerSet = c.controller.circuit_breakers
        probed = [b for b in breakers if b.settings.probe is not None]
        self._timer = c.timer.call_repeatedly(PROBE_TICK_SECONDS, self.tick, (c, probed))

    def stop(self, c: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def tick(self, c: Any, probed: list[SharedCircuitBreaker]) -> None:
        semaphore = getattr(c.controller, "semaphore", None)
        for breaker in probed:
            overdue = breaker.probe_overdue()
            if overdue is not None:
                logger.warning("circuit %s: probe %d ran out of time", breaker.name, overdue)
                breaker.end_probe(overdue, passed=False)
            if semaphore is not None and semaphore.value <= 0:
                continue  # every pool process busy: the probe waits, the circuit stays open
            number = breaker.begin_probe()
            if number is not None:
                _submit(c, breaker, number, semaphore)


def _submit(c: Any, breaker: SharedCircuitBreaker, number: int, semaphore: Any) -> None:
    def done(outcome: Any) -> None:
        passed, said = outcome if isinstance(outcome, tuple) else (False, repr(outcome))
        if not passed:
            logger.warning("circuit %s: probe %d failed: %s", breaker.name, number, said)
        breaker.end_probe(number, passed=bool(passed))

    def lost(error: Any) -> None:
        logger.warning("circuit %s: probe %d ended its process: %r", breaker.name, number, error)
        breaker.end_probe(number, passed=False)

    def apply() -> None:
        c.pool.apply_async(
            run_probe,
            args=(breaker.settings.probe,),
            callback=done,
            error_callback=lost,
            timeout=breaker.settings.probe_timeout,
        )

    if semaphore is not None:  # the pool gives the slot back when the probe's job ends
        semaphore.acquire(apply)
    else:
        apply()
