"""Consumer bootstep: run a breaker's probe when its open period ends, before the trial."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import ImproperlyConfigured

from .breaker import SharedCircuitBreaker, failure_message
from .breaker_set import BreakerSet

__all__ = ("PROBE_TICK_SECONDS", "ProbeStep", "run_probe")

logger = logging.getLogger(__name__)

PROBE_TICK_SECONDS = 0.25
"""How often the consumer looks for a probe that is due, or overdue."""

ProbeOutcome = tuple[bool, str]


def run_probe(probe: Callable[[], object]) -> ProbeOutcome:
    """Run ``probe``: whether it passed, and what it said if it did not. None or anything
    true passes; anything else falsy fails (``False``, ``0``, numpy's ``False`` from
    ``(a == b).all()``). A failure is an answer, not an error raised into a pool."""
    try:
        result = probe()
        passed = result is None or bool(result)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {failure_message(exc)}"
    if passed:
        return True, ""
    said = "False" if result is False else f"a false {type(result).__name__}"
    return False, f"returned {said}"


class ProbeStep(bootsteps.StartStopStep):
    """Probes each breaker that has one (``circuitgate_probe``) once its open period is over.

    While the probe runs the breaker keeps refusing: nothing is fetched. With the prefork
    pool it runs in a pool process (where a task would run, so a CUDA probe sees the device
    as a task does), when one is free (a pool busy with long tasks could not run the trial
    either), with the pool's hard time limit at ``probe_timeout``. The solo and threads pools
    cannot end a call that hangs, so there it runs in a thread of its own in the worker's
    process (where their tasks run too), and neither the consumer's loop nor a pool thread
    waits for it. Past ``probe_timeout`` it failed, whatever comes later. A pass lets the
    half-open trial in; a failure opens the circuit for another period.
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
        if isinstance(c.pool, PreforkPool):
            for breaker in probed:
                _check_picklable(breaker)
        self._timer = c.timer.call_repeatedly(PROBE_TICK_SECONDS, self.tick, (c, probed))

    def stop(self, c: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def tick(self, c: Any, probed: list[SharedCircuitBreaker]) -> None:
        # Only the prefork pool gives a slot back when a job ends; the others never take one.
        prefork = isinstance(c.pool, PreforkPool)
        semaphore = getattr(c.controller, "semaphore", None) if prefork else None
        for breaker in probed:
            overdue = breaker.probe_overdue()
            if overdue is not None:
                logger.warning("circuit %s: probe %d ran out of time", breaker.name, overdue)
                breaker.end_probe(overdue, passed=False)
            if semaphore is not None and semaphore.value <= 0:
                continue  # every pool process busy: the probe waits, the circuit stays open
            number = breaker.begin_probe()
            if number is not None and prefork:
                _submit(c, breaker, number, semaphore)
            elif number is not None:
                _start_thread(breaker, number)


def _check_picklable(breaker: SharedCircuitBreaker) -> None:
    """A prefork probe travels to a pool process pickled: refuse at start one that cannot
    (a lambda, a closure), instead of failing every open period."""
    try:
        pickle.dumps(breaker.settings.probe)
    except Exception as exc:
        raise ImproperlyConfigured(
            f"circuitgate_probe for breaker {breaker.name!r} cannot be sent to a prefork pool "
            f"process ({type(exc).__name__}: {exc}): give a module-level function, or its "
            "dotted name"
        ) from exc


def _ender(breaker: SharedCircuitBreaker, number: int) -> Callable[[Any], None]:
    """The callback that ends probe ``number`` with what `run_probe` answered."""

    def done(outcome: Any) -> None:
        passed, said = outcome if isinstance(outcome, tuple) else (False, repr(outcome))
        if not passed:
            logger.warning("circuit %s: probe %d failed: %s", breaker.name, number, said)
        breaker.end_probe(number, passed=bool(passed))

    return done


def _start_thread(breaker: SharedCircuitBreaker, number: int) -> None:
    probe, done = breaker.settings.probe, _ender(breaker, number)
    assert probe is not None
    name = f"circuitgate-probe-{breaker.name}-{number}"
    threading.Thread(target=lambda: done(run_probe(probe)), name=name, daemon=True).start()


def _submit(c: Any, breaker: SharedCircuitBreaker, number: int, semaphore: Any) -> None:
    done = _ender(breaker, number)

    def lost(error: Any) -> None:
        logger.warning("circuit %s: probe %d ended its process: %r", breaker.name, number, error)
        breaker.end_probe(number, passed=False)

    def apply() -> None:
        try:
            c.pool.apply_async(
                run_probe,
                args=(breaker.settings.probe,),
                callback=done,
                error_callback=lost,
                timeout=breaker.settings.probe_timeout,
            )
        except Exception as exc:  # never written to a process: its slot and verdict are ours
            if semaphore is not None:
                semaphore.release()
            lost(exc)

    if semaphore is not None:  # the pool gives the slot back when the probe's job ends
        semaphore.acquire(apply)
    else:
        apply()
