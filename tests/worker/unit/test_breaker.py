"""SharedCircuitBreaker's rules, on a fake clock; and its atomicity across processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from typing import Any

import pybreaker
import pytest
from celery.exceptions import Ignore, Reject, Retry

from circuitgate.breaker import Admission, SharedCircuitBreaker, open_period
from circuitgate.settings import Settings
from circuitgate.shared_state import State


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DeviceFault(Exception):
    pass


class Recorder(pybreaker.CircuitBreakerListener):
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.changes.append((old_state.name, new_state.name))


def make(clock: FakeClock, **overrides: Any) -> SharedCircuitBreaker:
    settings = dataclasses.replace(Settings(fail_max=3, reset_timeout=10, jitter=0.0), **overrides)
    return SharedCircuitBreaker(settings, clock=clock, rand=lambda: 0.5, name="test")


def fail(breaker: SharedCircuitBreaker, token: str, exc: BaseException | None = None) -> None:
    assert breaker.admit(token) is not Admission.REFUSE
    breaker.record_failure(token, exc or DeviceFault())


def test_trips_after_fail_max_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for i in range(2):
        fail(breaker, f"t{i}")
    assert breaker.current_state == "closed"
    breaker.record_success("ok")  # a success resets the run of failures
    for i in range(3):
        fail(breaker, f"u{i}")
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN
    assert snapshot.trips == 1
    assert breaker.fail_counter == 3
    assert breaker.admit("next") is Admission.REFUSE
    assert not breaker.fetch_allowed()


def test_failure_rate_over_the_window_trips_without_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = make(clock, fail_max=100, failure_rate_threshold=0.5, window_size=10, min_calls=6)
    for i in range(2):  # alternate: never two failures in a row
        breaker.record_success(f"s{i}")
        fail(breaker, f"f{i}")
    assert breaker.current_state == "closed"  # half failed, but fewer than min_calls calls
    breaker.record_success("s2")
    fail(breaker, "f2")
    assert breaker.current_state == "open"


def test_half_open_lets_exactly_one_trial_in_and_its_success_closes() -> None:
    clock = FakeClock()
    listener = Recorder()
    breaker = make(clock)
    breaker.add_listener(listener)
    for i in range(3):
        fail(breaker, f"t{i}")
    clock.now += 9.9
    assert not breaker.fetch_allowed()
    clock.now += 0.2
    assert breaker.fetch_allowed()
    assert breaker.admit("trial") is Admission.TRIAL
    assert breaker.admit("trial") is Admission.TRIAL  # the same task asking again
    assert breaker.admit("other") is Admission.REFUSE
    assert not breaker.fetch_allowed()
    breaker.record_success("trial")
    assert breaker.current_state == "closed"
    assert breaker.fail_counter == 0
    assert listener.changes == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


def test_a_failed_trial_reopens_for_longer_and_a_success_resets_the_backoff() -> None:
    clock = FakeClock()
    breaker = make(clock, max_reset_timeout=35)
    for i in range(3):
        fail(breaker, f"t{i}")
    periods = [breaker.snapshot().open_period]
    for attempt in range(3):
        clock.now += periods[-1]
        fail(breaker, f"trial{attempt}")
        periods.append(breaker.snapshot().open_period)
    assert periods == [10, 20, 35, 35]
    clock.now += 35
    assert breaker.admit("good") is Admission.TRIAL
    breaker.record_success("good")
    for i in range(3):
        fail(breaker, f"again{i}")
    assert breaker.snapshot().open_period == 10


def test_failures_of_tasks_started_before_the_trip_change_nothing() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for i in range(3):
        fail(breaker, f"t{i}")
    before = breaker.snapshot()
    breaker.record_failure("straggler", DeviceFault())
    breaker.record_success("other-straggler")
    after = breaker.snapshot()
    assert (after.state, after.trips, after.open_until) == (
        before.state,
        before.trips,
        before.open_until,
    )


def test_a_trial_that_never_reports_is_given_up_after_the_trial_timeout() -> None:
    clock = FakeClock()
    breaker = make(clock, trial_timeout=30)
    for i in range(3):
        fail(breaker, f"t{i}")
    clock.now += 10
    assert breaker.admit("lost") is Admission.TRIAL
    clock.now += 29
    assert breaker.admit("next") is Admission.REFUSE
    clock.now += 1
    assert breaker.fetch_allowed()
    assert breaker.admit("next") is Admission.TRIAL


def test_releasing_the_trial_lets_the_next_task_try() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for i in range(3):
        fail(breaker, f"t{i}")
    clock.now += 10
    assert breaker.admit("poison") is Admission.TRIAL
    breaker.release("poison")
    assert breaker.current_state == "open"
    assert breaker.admit("next") is Admission.TRIAL


@pytest.mark.parametrize("exc", [Retry(), Reject(), Ignore(), KeyError("business")])
def test_celery_control_flow_and_ignored_exceptions_never_count(exc: BaseException) -> None:
    breaker = make(FakeClock(), ignore_exceptions=(KeyError,))
    assert not breaker.counts(exc)
    assert breaker.counts(DeviceFault())


def test_count_exceptions_limits_what_counts() -> None:
    breaker = make(FakeClock(), count_exceptions=(DeviceFault,))
    assert breaker.counts(DeviceFault())
    assert not breaker.counts(ValueError())


def test_call_keeps_pybreakers_face() -> None:
    clock = FakeClock()
    breaker = make(clock)
    assert breaker.call(lambda: 42) == 42
    for _ in range(3):
        with pytest.raises(DeviceFault):
            breaker.call(_raise)
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: 42)
    with pytest.raises(KeyError):  # not a system error: passes through, counts as success
        make(clock, ignore_exceptions=(KeyError,)).call(_raise_key)


def _raise() -> None:
    raise DeviceFault()


def _raise_key() -> None:
    raise KeyError("x")


@pytest.mark.parametrize("trips", [1, 2, 3, 10])
def test_open_period_jitter_stays_within_bounds(trips: int) -> None:
    settings = Settings(reset_timeout=10, backoff_multiplier=2, max_reset_timeout=60, jitter=0.2)
    base = min(10 * 2 ** (trips - 1), 60)
    low, high = open_period(trips, settings, 0.0), open_period(trips, settings, 0.999999)
    assert low == pytest.approx(base * 0.8)
    assert high <= 60 and high >= min(base * 1.2, 60) - 1e-3


def _race_for_the_trial(breaker: SharedCircuitBreaker, token: str, results: Any) -> None:
    results.put((token, breaker.admit(token).value))


def test_exactly_one_process_wins_the_half_open_trial() -> None:
    fork = multiprocessing.get_context("fork")
    breaker = SharedCircuitBreaker(Settings(fail_max=1, reset_timeout=0.05, jitter=0.0))
    breaker.record_failure("t", DeviceFault())
    assert breaker.current_state == "open"
    time.sleep(0.1)
    results = fork.Queue()
    racers = [
        fork.Process(target=_race_for_the_trial, args=(breaker, f"p{i}", results)) for i in range(8)
    ]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=10) for _ in racers]
    for racer in racers:
        racer.join(10)
    winners = [token for token, admission in outcomes if admission == "trial"]
    assert len(winners) == 1
    assert breaker.snapshot().trial_id == winners[0]


def test_forced_open_drains_until_reset_and_forced_closed_never_trips() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.force(State.FORCED_OPEN)
    clock.now += 10_000
    assert not breaker.fetch_allowed()
    assert breaker.admit("t") is Admission.REFUSE
    assert breaker.snapshot().paused_seconds >= 0
    breaker.force(State.FORCED_CLOSED)
    for i in range(10):
        fail(breaker, f"f{i}")
    assert breaker.snapshot().state is State.FORCED_CLOSED
    assert breaker.fetch_allowed()
    breaker.force(None)
    assert breaker.snapshot().state is State.CLOSED
    assert breaker.fail_counter == 0
    with pytest.raises(ValueError, match="only FORCED_OPEN or FORCED_CLOSED"):
        breaker.force(State.OPEN)


def test_trial_outcomes_are_counted() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for i in range(3):
        fail(breaker, f"t{i}")
    clock.now += 10
    fail(breaker, "trial1")
    clock.now += 20
    assert breaker.admit("trial2") is Admission.TRIAL
    breaker.record_success("trial2")
    snapshot = breaker.snapshot()
    assert (snapshot.trial_failures, snapshot.trial_successes) == (1, 1)
