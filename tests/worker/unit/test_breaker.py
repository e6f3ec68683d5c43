"""SharedCircuitBreaker's rules, on a fake clock; and its atomicity across processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from typing import Any

import hypothesis
import pybreaker
import pytest
from celery.exceptions import Ignore, Reject, Retry
from hypothesis import strategies as st

from circuitgate.breaker import Admission, SharedCircuitBreaker, TrialTaken, open_period
from circuitgate.settings import Settings
from circuitgate.shared_state import CLAIMS_KEPT, HANDED_BACK_KEPT, State
from circuitgate_devkit.waiting import eventually
from tests.profiles import property_settings

from .fakes import DeviceFault, FakeClock


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


def test_a_full_window_of_successes_rolls_on_and_still_judges_the_rate() -> None:
    # Successes on a full clean window only count (no lock); failures after them are judged
    # over the last window_size calls as before.
    clock = FakeClock()
    breaker = make(clock, fail_max=100, failure_rate_threshold=0.5, window_size=4, min_calls=4)
    for i in range(50):
        breaker.record_success(f"s{i}")
    assert breaker.snapshot().successes_total == 50
    assert (breaker.snapshot().window_calls, breaker.snapshot().window_failures) == (4, 0)
    fail(breaker, "f0")
    breaker.record_success("s50")
    assert breaker.current_state == "closed"  # 1 of the last 4 failed
    fail(breaker, "f1")
    assert breaker.current_state == "open"  # 2 of the last 4


def succeed_taking(
    breaker: SharedCircuitBreaker, clock: FakeClock, token: str, seconds: float
) -> None:
    assert breaker.admit(token) is not Admission.REFUSE
    started = breaker.clock()
    clock.now += seconds
    breaker.record_success(token, started=started)


def test_slow_calls_trip_at_the_slow_call_rate_even_on_a_quiet_clean_window() -> None:
    clock = FakeClock()
    breaker = make(
        clock, slow_call_seconds=5, slow_call_rate_threshold=0.5, window_size=4, min_calls=4
    )
    for i in range(6):  # a full clean window: successes take the quiet path now
        succeed_taking(breaker, clock, f"fast{i}", 1)
    succeed_taking(breaker, clock, "slow0", 6)
    assert breaker.current_state == "closed"  # 1 slow of the last 4
    succeed_taking(breaker, clock, "exactly", 5)  # not slower than the limit: not slow
    assert breaker.current_state == "closed"
    succeed_taking(breaker, clock, "slow1", 7)
    assert breaker.current_state == "open"  # 2 slow of the last 4
    snapshot = breaker.snapshot()
    assert (snapshot.trips, snapshot.failures_total, snapshot.successes_total) == (1, 0, 9)


def test_slow_failures_count_toward_both_rates_and_fast_calls_push_slow_ones_out() -> None:
    clock = FakeClock()
    breaker = make(
        clock, fail_max=100, slow_call_seconds=5, slow_call_rate_threshold=0.75, window_size=4,
        min_calls=4,
    )  # fmt: skip
    for token, seconds in (("s0", 9), ("s1", 9), ("f0", 0), ("f1", 0), ("f2", 0)):
        succeed_taking(breaker, clock, token, seconds)
    assert breaker.current_state == "closed"  # the slow ones went out of the window
    for i in range(2):
        succeed_taking(breaker, clock, f"slow{i}", 9)
    assert breaker.admit("slow-failure") is Admission.RUN
    started = breaker.clock()
    clock.now += 9
    breaker.record_failure("slow-failure", DeviceFault(), started=started)
    assert breaker.current_state == "open"  # 3 slow of the last 4, one of them a failure


def test_a_slow_trial_opens_the_circuit_again_and_a_fast_one_closes_it() -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_seconds=5, max_reset_timeout=100)
    for i in range(3):
        fail(breaker, f"t{i}")
    clock.now += 10
    assert breaker.admit("slow-trial") is Admission.TRIAL
    started = breaker.clock()
    clock.now += 6
    breaker.record_success("slow-trial", started=started)
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.open_period == 20  # backed off
    assert (snapshot.trial_successes, snapshot.trial_failures) == (0, 1)
    clock.now += 20
    assert breaker.admit("fast-trial") is Admission.TRIAL
    succeed_taking(breaker, clock, "fast-trial", 1)
    assert breaker.current_state == "closed"


def test_without_a_slow_call_limit_no_call_is_slow() -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=2, min_calls=1)
    for i in range(5):
        succeed_taking(breaker, clock, f"long{i}", 10_000)
    assert breaker.current_state == "closed"


def test_a_success_of_a_healthy_worker_takes_no_lock() -> None:
    breaker = make(FakeClock(), window_size=2, min_calls=2)
    for i in range(3):  # the window is full and clean after two; the third takes a slot
        breaker.record_success(f"s{i}")
    with breaker.shared._thread_lock:  # every transaction takes it first
        done = threading.Thread(target=breaker.record_success, args=("s3",), daemon=True)
        done.start()
        done.join(5)
        assert not done.is_alive(), "the success waited for the lock"
        assert breaker.admit("s4") is Admission.RUN and breaker.fetch_allowed()
    assert breaker.snapshot().successes_total == 4


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
    for _ in range(2):
        with pytest.raises(DeviceFault):
            breaker.call(_raise)
    # As pybreaker (throw_new_error_on_trip=True): the tripping call raises its own error.
    with pytest.raises(pybreaker.CircuitBreakerError) as tripped:
        breaker.call(_raise)
    assert isinstance(tripped.value.__cause__, DeviceFault)
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: 42)
    with pytest.raises(KeyError):  # not a system error: passes through, neutral
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


def trip_and_wait(breaker: SharedCircuitBreaker, clock: FakeClock) -> None:
    for i in range(3):
        fail(breaker, f"t{i}")
    clock.now += 10  # the open period is over


def test_the_late_success_of_a_replaced_trial_still_closes_the_circuit() -> None:
    """Issue 14 item 3: an overdue trial replaced by another must not lose its verdict."""
    clock = FakeClock()
    breaker = make(clock, trial_timeout=30)
    trip_and_wait(breaker, clock)
    assert breaker.admit("slow") is Admission.TRIAL
    clock.now += 30  # overdue, and nothing kept its claim alive
    assert breaker.admit("second") is Admission.TRIAL
    breaker.record_success("slow")
    assert breaker.snapshot().state is State.CLOSED


def test_a_running_trial_keeps_its_claim_however_long_it_runs() -> None:
    """Issue 14 item 3: a healthy task longer than trial_timeout closes the circuit."""
    clock = FakeClock()
    breaker = make(clock, trial_timeout=30)
    breaker._heartbeat_interval = 0.01  # real seconds; the fake clock moves by hand
    trip_and_wait(breaker, clock)
    assert breaker.admit("long") is Admission.TRIAL
    with breaker.trial_running("long"):
        for _ in range(10):  # 270 s of fake time: nine trial timeouts
            clock.now += 27
            eventually(
                lambda: breaker.snapshot().open_until >= clock.now + 29,
                timeout=10,
                interval=0.005,
                what="the heartbeat to push the trial's deadline on",
            )
            assert breaker.admit("other") is Admission.REFUSE
            assert not breaker.fetch_allowed()
    breaker.record_success("long")
    assert breaker.snapshot().state is State.CLOSED
    assert breaker.snapshot().trial_claims == 0


def test_a_second_delivery_of_a_running_trials_id_neither_runs_nor_gives_the_claim_back() -> None:
    """Two deliveries of one task id (a redelivery past a visibility timeout, a duplicate
    publish): while one runs as the trial, the other is handed back, and whatever ends it (a
    discard, a revoke, a neutral outcome) leaves the running one's claim alone."""
    clock = FakeClock()
    breaker = make(clock)
    trip_and_wait(breaker, clock)
    assert breaker.admit_delivery("T").claimed  # the second delivery, at the gate
    assert breaker.admit("T") is Admission.TRIAL  # the first one, in its pool process
    with breaker.trial_running("T"):
        assert breaker.admit("T") is Admission.REFUSE  # not a second run beside it
        breaker.release("T")  # the second delivery discarded, revoked, or ended neutral
        snapshot = breaker.snapshot()
        assert (snapshot.state, snapshot.trial_id) == (State.HALF_OPEN, "T")
        assert breaker.admit("U") is Admission.REFUSE  # still one trial at a time
    breaker.release("T")  # the run itself ends neutral: now the claim goes
    assert breaker.admit("U") is Admission.TRIAL


def test_a_trial_whose_pool_process_was_killed_mid_run_gives_its_claim_back() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip_and_wait(breaker, clock)
    assert breaker.admit("T") is Admission.TRIAL
    running = breaker.trial_running("T")
    running.__enter__()  # and never left: the process is gone
    try:
        breaker.release("T", killed_pid=os.getpid() + 1)  # another process, not the run
        assert breaker.admit("U") is Admission.REFUSE
        breaker.release("T", killed_pid=os.getpid())  # the main process settles the lost child
        assert breaker.admit("U") is Admission.TRIAL
    finally:
        running.__exit__(None, None, None)
    assert breaker.snapshot().trial_id == "U"  # the dead run's end takes nothing from U


def test_two_runs_of_the_trial_admitted_at_once_run_once() -> None:
    """Both deliveries of one id were admitted before either started: the second one to
    start is handed back, not run beside the first as a second trial."""
    clock = FakeClock()
    breaker = make(clock)
    trip_and_wait(breaker, clock)
    assert breaker.admit("T") is Admission.TRIAL
    assert breaker.admit("T") is Admission.TRIAL
    with breaker.trial_running("T"), pytest.raises(TrialTaken):
        breaker.trial_running("T")
    assert breaker.snapshot().trial_runner is None


def test_a_run_gone_silent_lets_a_redelivery_of_its_id_take_the_claim_anew() -> None:
    """A trial hung past max_trial_seconds stops beating and its claim lapses. Its message
    comes back (a visibility timeout): taken anew, not refused for as long as the hung run
    lasts, which would hand it back and forth with the circuit never closing."""
    clock = FakeClock()
    breaker = make(clock, trial_timeout=30, max_trial_seconds=60)
    trip_and_wait(breaker, clock)
    assert breaker.admit("T") is Admission.TRIAL
    with breaker.trial_running("T"):  # hung: no verdict comes
        clock.now += 200  # past max_trial_seconds and the last deadline it pushed
        assert breaker.fetch_allowed()
        assert breaker.admit("T") is Admission.TRIAL  # its redelivery
        breaker.record_success("T")
    assert breaker.snapshot().state is State.CLOSED


def test_a_task_id_that_is_no_string_is_a_token_on_every_path() -> None:
    """The main process settles requests by their raw id: an integer one must not raise."""
    clock = FakeClock()
    breaker = make(clock)
    trip_and_wait(breaker, clock)
    assert breaker.admit(5) is Admission.TRIAL  # type: ignore[arg-type]
    breaker.release(5, killed_pid=1)  # type: ignore[arg-type]
    assert breaker.admit(6) is Admission.TRIAL  # type: ignore[arg-type]
    breaker.record_failure(6, DeviceFault())  # type: ignore[arg-type]
    assert breaker.snapshot().state is State.OPEN


def test_a_trial_whose_process_stopped_beating_is_replaced() -> None:
    clock = FakeClock()
    breaker = make(clock, trial_timeout=30)
    trip_and_wait(breaker, clock)
    assert breaker.admit("gone") is Admission.TRIAL
    with breaker.trial_running("gone"):
        pass  # the heartbeat stops with the block, as it stops with a dead process
    clock.now += 30
    assert breaker.admit("next") is Admission.TRIAL
    assert breaker.snapshot().trial_claims == 2


def test_trial_running_costs_one_shared_read_for_any_task_but_the_trial() -> None:
    clock = FakeClock()
    breaker = make(clock)
    transactions = []
    real = breaker.shared.update

    def counted(body: Any) -> Any:
        transactions.append(1)
        return real(body)

    breaker.shared.update = counted  # type: ignore[method-assign]
    threads = threading.active_count()
    with breaker.trial_running("ordinary"):
        assert threading.active_count() == threads
    assert transactions == []


def test_an_unclaimed_admission_never_claims_the_trial() -> None:
    """Issue 14 item 4: an ETA message is admitted unclaimed until it really runs."""
    clock = FakeClock()
    breaker = make(clock)
    assert breaker.admit("eta", claim=False) is Admission.RUN  # flowing
    for i in range(3):
        fail(breaker, f"t{i}")
    assert breaker.admit("eta", claim=False) is Admission.REFUSE  # the open period
    assert breaker.snapshot().refused_total == 1
    clock.now += 10
    assert breaker.admit("eta", claim=False) is Admission.RUN  # would have claimed
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.trial_id, snapshot.trial_claims) == (State.OPEN, None, 0)
    assert breaker.fetch_allowed()
    assert breaker.admit("trial") is Admission.TRIAL
    assert breaker.admit("trial", claim=False) is Admission.TRIAL
    assert breaker.admit("eta", claim=False) is Admission.REFUSE  # the trial is out
    assert breaker.admit("eta") is Admission.REFUSE


def test_a_non_ascii_task_id_over_64_bytes_is_a_trial_like_any_other() -> None:
    """Issue 14 item 5: the old 64-byte cut split a character and the page stopped decoding."""
    clock = FakeClock()
    breaker = make(clock)
    trip_and_wait(breaker, clock)
    token = "задача-" * 10  # 130 bytes of UTF-8
    assert breaker.admit(token) is Admission.TRIAL
    snapshot = breaker.snapshot()
    assert snapshot.trial_id is not None and token.startswith(snapshot.trial_id)
    assert breaker.admit(token[:-1] + "!") is Admission.REFUSE  # same first 64 bytes
    breaker.record_success(token)
    assert breaker.snapshot().state is State.CLOSED


def test_releasing_changes_no_counter() -> None:
    """Issue 14 item 6: an outcome that does not count is neutral, not a success."""
    clock = FakeClock()
    breaker = make(clock)
    for i in range(2):
        fail(breaker, f"t{i}")
    before = breaker.snapshot()
    breaker.release("retried")
    after = breaker.snapshot()
    assert after == before
    fail(breaker, "t2")  # the run of failures went on through the neutral outcome
    assert breaker.snapshot().state is State.OPEN
    clock.now += 10
    assert breaker.admit("trial") is Admission.TRIAL
    breaker.release("trial")
    snapshot = breaker.snapshot()
    assert (snapshot.trial_successes, snapshot.trial_failures, snapshot.trips) == (0, 0, 1)
    assert breaker.admit("next") is Admission.TRIAL


@pytest.mark.parametrize("consecutive", [1023, 1024, 1025, 1026, 5000, 2**32 - 2])
def test_the_backoff_never_overflows_however_many_trips_in_a_row(consecutive: int) -> None:
    """Issue 14 item 7: ``2.0 ** n`` overflowed after ~1025 trips and lost the trial."""
    clock = FakeClock()
    breaker = make(clock, max_reset_timeout=600)
    trip_and_wait(breaker, clock)
    breaker.shared.update(lambda fields: setattr(fields, "consecutive_trips", consecutive))
    assert breaker.admit("trial") is Admission.TRIAL
    breaker.record_failure("trial", DeviceFault())
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN
    assert snapshot.consecutive_trips == consecutive + 1
    assert snapshot.open_period == 600
    assert snapshot.trial_failures == 1


def test_open_period_reaches_the_cap_without_computing_the_power() -> None:
    settings = Settings(reset_timeout=1e-3, backoff_multiplier=1e6, max_reset_timeout=1e6)
    assert open_period(10**9, settings, 0.5) == 1e6
    assert open_period(1, settings, 0.5) == 1e-3


def test_a_released_claim_frees_its_slot_so_a_live_claim_is_never_overwritten() -> None:
    """A slow trial's claim lapsed; eight more claims lapsed or were released since: its
    late success still closes (the ring reused the empty slots)."""
    clock = FakeClock()
    breaker = make(clock, fail_max=1, trial_timeout=5)
    fail(breaker, "boom")
    clock.now += 10
    assert breaker.admit("slow") is Admission.TRIAL
    for i in range(CLAIMS_KEPT):
        clock.now += 6  # the previous claim lapses
        assert breaker.admit(f"retried{i}") is Admission.TRIAL
        breaker.release(f"retried{i}")
    breaker.record_success("slow")
    assert breaker.snapshot().state is State.CLOSED


def test_when_every_claim_is_live_the_oldest_is_forgotten_first() -> None:
    clock = FakeClock()
    breaker = make(clock, fail_max=1, trial_timeout=5)
    fail(breaker, "boom")
    clock.now += 10
    for i in range(CLAIMS_KEPT + 1):
        assert breaker.admit(f"slow{i}") is Admission.TRIAL
        clock.now += 6
    breaker.record_success("slow0")  # pushed out by the ninth
    assert breaker.snapshot().state is not State.CLOSED
    breaker.record_success("slow1")
    assert breaker.snapshot().state is State.CLOSED


def test_a_hung_trial_keeps_its_claim_no_longer_than_max_trial_seconds() -> None:
    """Celery sets no time limit by default: a trial stuck in a driver call must not pause
    the worker forever."""
    settings = Settings(
        fail_max=1, reset_timeout=0.05, max_reset_timeout=0.05, jitter=0,
        trial_timeout=0.3, max_trial_seconds=0.6,
    )  # fmt: skip
    breaker = SharedCircuitBreaker(settings, heartbeat_interval=0.05)
    breaker.record_failure("boom", DeviceFault())
    eventually(lambda: breaker.admit("hung") is Admission.TRIAL, timeout=5)
    with breaker.trial_running("hung"):
        eventually(breaker.fetch_allowed, timeout=10, what="the hung trial's claim to lapse")
        assert breaker.admit("next") is Admission.TRIAL
        eventually(
            lambda: not any(t.name.startswith("circuitgate-trial") for t in threading.enumerate()),
            what="the heartbeat to stop",
        )


@pytest.mark.parametrize("interval", [float("nan"), -1.0, 0.0, float("inf")])
def test_a_heartbeat_interval_that_would_spin_or_never_beat_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        SharedCircuitBreaker(Settings(), heartbeat_interval=interval)


def test_the_backoff_of_a_tiny_reset_timeout_never_overflows() -> None:
    settings = Settings(reset_timeout=1e-305, max_reset_timeout=1e7, jitter=0)
    assert open_period(1030, settings, 0.5) < 1e7
    assert open_period(5000, settings, 0.5) == 1e7


@hypothesis.given(names=st.lists(st.text(max_size=80), min_size=1, max_size=3 * HANDED_BACK_KEPT))
@property_settings(quick=50, nightly=500)
def test_the_last_deliveries_handed_back_are_remembered_and_no_other(names: list[str]) -> None:
    """A child's hand-back is known to the main process for the last HANDED_BACK_KEPT
    deliveries (older ones only risk a second copy); a delivery never handed back never
    reads as handed back, which would drop its message."""
    breaker = make(FakeClock())
    for name in names:
        breaker.note_handed_back(f"handed {name}")
    for name in names[-HANDED_BACK_KEPT:]:
        assert breaker.was_handed_back(f"handed {name}")
    assert not breaker.was_handed_back("never handed back")
    assert breaker.snapshot().handed_back_total == len(names)
