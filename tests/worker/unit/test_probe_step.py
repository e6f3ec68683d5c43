"""The probe step against Celery's real solo and threads pools and kombu's semaphore (the
worker's ``c.controller.semaphore`` whenever the consumer runs on the event loop)."""

from __future__ import annotations

import pickle
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.exceptions import ImproperlyConfigured
from kombu.asynchronous.semaphore import LaxBoundedSemaphore

from circuitgate.breaker import Admission, SharedCircuitBreaker
from circuitgate.probe_step import ProbeStep, run_probe
from circuitgate.settings import Settings
from circuitgate_devkit.waiting import eventually

from .fakes import DeviceFault, FakeClock


def failing_probe() -> bool:
    return False


def opened(clock: FakeClock, probe: Callable[[], object] = failing_probe) -> SharedCircuitBreaker:
    settings = Settings(
        fail_max=1, reset_timeout=10, jitter=0.0, backoff_multiplier=1, probe=probe,
        probe_timeout=5,
    )  # fmt: skip
    breaker = SharedCircuitBreaker(settings, clock=clock, rand=lambda: 0.5, name="t")
    assert breaker.admit("t") is Admission.RUN
    breaker.record_failure("t", DeviceFault())
    return breaker


def consumer(pool: Any, concurrency: int) -> Any:
    controller = types.SimpleNamespace(semaphore=LaxBoundedSemaphore(concurrency))
    return types.SimpleNamespace(controller=controller, pool=pool)


def step() -> ProbeStep:
    return ProbeStep.__new__(ProbeStep)  # tick and start need no blueprint


class UnpicklingPool(PreforkPool):
    """What the prefork pool's ``apply_async`` does with a probe it cannot pickle: raises
    in the caller, before any process has the job."""

    def __init__(self) -> None:
        pass

    def apply_async(self, target: Any, args: Any = (), **_: Any) -> None:
        pickle.dumps(args)


@pytest.mark.parametrize("pool_class", [SoloPool, ThreadsPool])
def test_every_open_period_is_probed_on_the_solo_and_threads_pools(pool_class: Any) -> None:
    """These pools never give a semaphore slot back: a probe that took one would leave the
    circuit open for good after ``concurrency`` probes."""
    clock = FakeClock()
    breaker = opened(clock)
    pool = pool_class(2)
    pool.start()
    try:
        c = consumer(pool, 2)
        for period in range(1, 5):
            clock.now += breaker.snapshot().open_period
            step().tick(c, [breaker])
            assert breaker.shared.read(lambda f: int(f.probes)) == period
            eventually(lambda n=period: breaker.snapshot().probe_failures == n)  # type: ignore[misc]
    finally:
        pool.stop()


def test_a_probe_that_hangs_on_the_solo_pool_keeps_neither_the_loop_nor_the_circuit() -> None:
    """The solo pool would run the probe on the consumer's loop, where nothing ends it."""
    clock = FakeClock()
    release = threading.Event()
    breaker = opened(clock, probe=release.wait)
    c = consumer(SoloPool(1), 1)
    clock.now += breaker.snapshot().open_period
    step().tick(c, [breaker])  # returns: the probe waits in a thread of its own
    assert breaker.shared.read(lambda f: int(f.probes)) == 1
    clock.now += 5  # probe_timeout
    step().tick(c, [breaker])
    assert breaker.snapshot().probe_failures == 1
    release.set()  # the late verdict (a pass) changes nothing
    eventually(lambda: not [t for t in threading.enumerate() if t.name.startswith("circuitgate")])
    assert breaker.snapshot().probe_successes == 0


def test_a_probe_the_prefork_pool_cannot_take_fails_and_gives_its_slot_back() -> None:
    clock = FakeClock()
    breaker = opened(clock, probe=lambda: True)
    c = consumer(UnpicklingPool(), 1)
    clock.now += breaker.snapshot().open_period
    step().tick(c, [breaker])
    assert breaker.snapshot().probe_failures == 1
    assert c.controller.semaphore.value == 1


def test_the_prefork_pool_refuses_at_start_a_probe_it_could_never_send() -> None:
    c = consumer(UnpicklingPool(), 1)
    c.controller.circuit_breakers = [opened(FakeClock(), probe=lambda: True)]
    with pytest.raises(ImproperlyConfigured, match="circuitgate_probe for breaker 't'"):
        step().start(c)


class NumpyFalse:
    """What ``(a == b).all()`` returns: false, but not ``False``."""

    def __bool__(self) -> bool:
        return False


def test_any_false_answer_but_none_fails_the_probe() -> None:
    assert run_probe(NumpyFalse) == (False, "returned a false NumpyFalse")
    assert run_probe(lambda: 0) == (False, "returned a false int")
    assert run_probe(lambda: "ok") == (True, "")
