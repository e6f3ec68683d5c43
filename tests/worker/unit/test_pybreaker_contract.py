"""SharedCircuitBreaker against pybreaker's face: one test per row of the table in
docs/pybreaker-compatibility.md (same as pybreaker, or a stated difference)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pybreaker
import pytest
from celery.exceptions import Ignore, Reject, Retry

from circuitgate.breaker import Admission, SharedCircuitBreaker
from circuitgate.settings import Settings
from circuitgate.shared_state import State
from circuitgate_devkit.waiting import eventually

from .fakes import DeviceFault, FakeClock


def make(clock: FakeClock, **kwargs: Any) -> SharedCircuitBreaker:
    settings = Settings(fail_max=2, reset_timeout=10, max_reset_timeout=100, jitter=0.0)
    return SharedCircuitBreaker(settings, clock=clock, rand=lambda: 0.5, name="face", **kwargs)


def _fault() -> None:
    raise DeviceFault()


def tripped(clock: FakeClock, **kwargs: Any) -> SharedCircuitBreaker:
    breaker = make(clock, **kwargs)
    breaker.open()
    return breaker


# -- same as pybreaker -------------------------------------------------------------------


def test_the_tripping_call_raises_circuit_breaker_error_from_the_original() -> None:
    breaker = make(FakeClock())
    with pytest.raises(DeviceFault):
        breaker.call(_fault)
    with pytest.raises(pybreaker.CircuitBreakerError) as raised:
        breaker.call(_fault)
    assert isinstance(raised.value.__cause__, DeviceFault)
    assert breaker.current_state == "open"


def test_throw_new_error_on_trip_false_raises_the_original() -> None:
    breaker = make(FakeClock(), throw_new_error_on_trip=False)
    for _ in range(2):
        with pytest.raises(DeviceFault):
            breaker.call(_fault)
    assert breaker.current_state == "open"
    assert breaker.open() is False  # pybreaker's open() returns the flag


def test_a_refused_call_raises_circuit_breaker_error_and_never_runs() -> None:
    breaker = tripped(FakeClock())
    ran = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: ran.append(1))
    assert ran == []


def test_calling_guards_the_with_block_by_the_same_rules() -> None:
    clock = FakeClock()
    breaker = make(clock)
    with pytest.raises(DeviceFault), breaker.calling():
        raise DeviceFault()
    assert breaker.fail_counter == 1
    with pytest.raises(pybreaker.CircuitBreakerError), breaker.calling():
        raise DeviceFault()
    ran = []
    with pytest.raises(pybreaker.CircuitBreakerError), breaker.calling():
        ran.append("refused")
    clock.now += 10
    with breaker.calling():
        assert breaker.current_state == "half-open"  # not closed before the block ran
        ran.append("trial")
    assert ran == ["trial"]
    assert breaker.current_state == "closed"


def test_a_generator_is_guarded_until_exhausted() -> None:
    breaker = make(FakeClock())

    @breaker
    def failing() -> Iterator[int]:
        yield 1
        raise DeviceFault()

    @breaker
    def healthy() -> Iterator[int]:
        yield 1

    stream = failing()
    assert next(stream) == 1
    with pytest.raises(DeviceFault):
        next(stream)
    assert breaker.fail_counter == 1
    assert list(healthy()) == [1]
    assert breaker.fail_counter == 0


def test_a_failed_trial_adds_to_fail_counter() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(2):
        with pytest.raises((DeviceFault, pybreaker.CircuitBreakerError)):
            breaker.call(_fault)
    clock.now += 10
    with pytest.raises(pybreaker.CircuitBreakerError, match="opened"):
        breaker.call(_fault)
    assert breaker.fail_counter == 3


def test_half_open_lets_the_next_call_be_the_trial() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.half_open()  # from closed, as pybreaker allows
    assert breaker.current_state == "half-open"
    assert breaker.call(lambda: 7) == 7
    assert breaker.current_state == "closed"
    breaker.force(State.FORCED_OPEN)
    breaker.half_open()  # a person's forced state is not the rules' to end
    assert breaker.snapshot().state is State.FORCED_OPEN


def test_the_reset_timeout_setter_takes_effect_from_the_next_trip() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.reset_timeout = 30
    assert breaker.reset_timeout == 30
    breaker.open()
    assert breaker.snapshot().open_period == 30
    with pytest.raises(ValueError, match="max_reset_timeout"):
        breaker.reset_timeout = 1000
    with pytest.raises(ValueError, match="reset_timeout"):
        breaker.reset_timeout = float("nan")


def test_the_fail_max_setter_takes_effect() -> None:
    breaker = make(FakeClock())
    breaker.fail_max = 1
    assert breaker.fail_max == 1
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(_fault)


def test_exclude_and_listeners_are_pybreakers() -> None:
    breaker = make(FakeClock(), exclude=[KeyError, lambda exc: "harmless" in str(exc)])
    assert breaker.excluded_exceptions[0] is KeyError
    breaker.add_excluded_exception(LookupError)
    assert not breaker.counts(IndexError())
    assert not breaker.counts(DeviceFault("harmless"))
    assert breaker.counts(DeviceFault())
    listener = pybreaker.CircuitBreakerListener()
    breaker.add_listener(listener)
    assert breaker.listeners == (listener,)


# -- stated differences ------------------------------------------------------------------


def test_success_threshold_other_than_one_is_refused() -> None:
    with pytest.raises(ValueError, match="success_threshold=3 is not supported"):
        make(FakeClock(), success_threshold=3)
    breaker = make(FakeClock())
    assert breaker.success_threshold == 1
    with pytest.raises(ValueError, match="success_threshold=2"):
        breaker.success_threshold = 2


def test_call_async_is_refused_rather_than_run_by_other_rules() -> None:
    breaker = make(FakeClock())
    with pytest.raises(NotImplementedError, match="calling"):
        breaker.call_async(lambda: None)


@pytest.mark.parametrize("exc", [Retry(), Reject(), Ignore()])
def test_celerys_control_flow_never_counts_and_is_not_listed_as_excluded(
    exc: BaseException,
) -> None:
    breaker = make(FakeClock())
    assert breaker.excluded_exceptions == ()
    assert not breaker.counts(exc)


def test_an_excluded_exception_is_neutral_not_a_success() -> None:
    """pybreaker counts it as a success (resets the failures, closes a half-open circuit)."""
    clock = FakeClock()
    breaker = make(clock, exclude=[KeyError])
    with pytest.raises(DeviceFault):
        breaker.call(_fault)
    with pytest.raises(KeyError):
        breaker.call(_raise_key)
    assert breaker.fail_counter == 1  # the run of failures goes on
    breaker.half_open()
    with pytest.raises(KeyError):
        breaker.call(_raise_key)
    assert breaker.current_state == "open"  # the trial was released, not passed
    assert breaker.admit("next") is Admission.TRIAL


def _raise_key() -> None:
    raise KeyError("business")


def test_listeners_are_called_without_a_lock() -> None:
    """pybreaker calls them under its lock; here one blocked listener blocks no other call."""
    entered, release = threading.Event(), threading.Event()

    class Blocking(pybreaker.CircuitBreakerListener):
        def success(self, cb: Any) -> None:
            if threading.current_thread().name == "blocked":
                entered.set()
                release.wait(10)

    breaker = make(FakeClock(), listeners=[Blocking()])
    blocked = threading.Thread(target=breaker.call, args=(lambda: 1,), name="blocked")
    blocked.start()
    assert entered.wait(10)
    assert breaker.call(lambda: 2) == 2  # while the other thread sits in its listener
    release.set()
    blocked.join(10)


def test_one_trial_at_a_time_the_others_are_refused_while_it_runs() -> None:
    """pybreaker serialises calls; here a second call during the trial is refused at once."""
    clock = FakeClock()
    breaker = tripped(clock)
    clock.now += 10
    inner: list[str] = []

    def trial() -> None:
        with pytest.raises(pybreaker.CircuitBreakerError):
            breaker.call(lambda: inner.append("second"))
        inner.append("trial")

    breaker.call(trial)
    assert inner == ["trial"]
    assert breaker.current_state == "closed"


def test_the_open_period_backs_off_with_consecutive_trips() -> None:
    """pybreaker stays open ``reset_timeout`` every time."""
    clock = FakeClock()
    breaker = tripped(clock)
    periods = [breaker.snapshot().open_period]
    for _ in range(3):
        clock.now += periods[-1]
        with pytest.raises(pybreaker.CircuitBreakerError):
            breaker.call(_fault)
        periods.append(breaker.snapshot().open_period)
    assert periods == [10, 20, 40, 80]


def test_a_trial_that_never_reports_is_given_up_after_trial_timeout() -> None:
    """pybreaker has no deadline: its half-open state waits for the next call's outcome."""
    clock = FakeClock()
    breaker = SharedCircuitBreaker(
        dataclasses.replace(Settings(fail_max=1, jitter=0.0), trial_timeout=30), clock=clock
    )
    breaker.open()
    clock.now += 60
    assert breaker.admit("lost") is Admission.TRIAL
    clock.now += 30
    assert breaker.admit("next") is Admission.TRIAL


# -- same as pybreaker: the edges --------------------------------------------------------


def test_close_when_already_closed_forgets_the_failures() -> None:
    breaker = make(FakeClock())
    with pytest.raises(DeviceFault):
        breaker.call(_fault)
    assert breaker.fail_counter == 1
    breaker.close()
    assert breaker.fail_counter == 0


def test_open_while_open_starts_the_open_period_again() -> None:
    clock = FakeClock()
    breaker = tripped(clock)
    trips = breaker.snapshot().trips
    clock.now += 8
    breaker.open()
    clock.now += 8  # 16 s after the trip, 8 s after open(): still open
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: 1)
    assert breaker.snapshot().trips == trips  # restarted, not counted as another trip
    clock.now += 2
    assert breaker.call(lambda: 1) == 1


def test_on_the_tripping_call_listeners_hear_the_failure_before_the_state_change() -> None:
    heard: list[str] = []

    class Order(pybreaker.CircuitBreakerListener):
        def failure(self, cb: Any, exc: BaseException) -> None:
            heard.append("failure")

        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            heard.append(f"{old_state.name}->{new_state.name}")

    breaker = make(FakeClock(), listeners=[Order()])
    for _ in range(2):
        with pytest.raises((DeviceFault, pybreaker.CircuitBreakerError)):
            breaker.call(_fault)
    assert heard == ["failure", "failure", "closed->open"]


def test_a_generator_trial_keeps_its_claim_while_it_is_consumed() -> None:
    """The trial is the generator's whole consumption, not the call that returned it."""
    clock = FakeClock()
    breaker = SharedCircuitBreaker(
        Settings(fail_max=1, reset_timeout=10, max_reset_timeout=10, jitter=0, trial_timeout=5),
        clock=clock,
        heartbeat_interval=0.01,
    )
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(_fault)
    clock.now += 10

    def stream() -> Iterator[Admission]:
        clock.now += 4  # most of trial_timeout gone, and the trial runs on
        eventually(
            lambda: breaker.snapshot().open_until >= clock.now + 5,
            what="a heartbeat while the generator is consumed",
        )
        clock.now += 4  # past the claim's first deadline
        yield breaker.admit("other")

    assert list(breaker.call(stream)) == [Admission.REFUSE]
    assert breaker.current_state == "closed"


# -- stated differences: the edges -------------------------------------------------------


def test_a_trial_released_without_a_verdict_is_announced_to_listeners() -> None:
    clock = FakeClock()
    heard: list[tuple[str, str]] = []

    class Changes(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            heard.append((old_state.name, new_state.name))

    breaker = tripped(clock, listeners=[Changes()])
    clock.now += 10
    assert breaker.admit("trial") is Admission.TRIAL
    breaker.release("trial")
    assert heard[-2:] == [("open", "half-open"), ("half-open", "open")]
    assert breaker.current_state == "open"
    assert breaker.admit("next") is Admission.TRIAL  # at once, no new open period
