"""Task-time evidence: what the breaker notes of each call, and what the document says of it."""

from __future__ import annotations

import dataclasses

import pytest
from celery.exceptions import Retry
from hypothesis import given
from hypothesis import strategies as st

from circuitgate.breaker import SharedCircuitBreaker
from circuitgate.breaker_set import BreakerSet
from circuitgate.contract import RecentCalls
from circuitgate.evidence import EvidenceClock, percentile, summarize
from circuitgate.report import describe_worker
from circuitgate.settings import InvalidSetting, Settings, load_settings
from circuitgate.shared_state import CALLS_KEPT, Call

from .fakes import DeviceFault, FakeClock


def test_the_summary_counts_every_call_and_times_the_successful_ones() -> None:
    calls = [Call(float(n), float(n), failed=False) for n in range(1, 11)]
    calls += [Call(20.0, 0.001, failed=True), Call(21.0, None, failed=True)]
    calls.append(Call(22.0, None, failed=False))  # how long it ran is unknown
    assert summarize(calls) == RecentCalls(calls=13, failures=2, p50_seconds=5, p90_seconds=9)
    assert summarize([]) == RecentCalls(calls=0, failures=0, p50_seconds=None, p90_seconds=None)
    only_failures = summarize([Call(1.0, 0.5, failed=True)])
    assert (only_failures.failures, only_failures.p50_seconds) == (1, None)


@given(st.lists(st.floats(0, 1e6), min_size=1))
def test_a_percentile_is_a_value_that_was_seen_and_p50_never_exceeds_p90(
    values: list[float],
) -> None:
    ordered = sorted(values)
    p50, p90 = percentile(ordered, 0.5), percentile(ordered, 0.9)
    assert p50 <= p90
    assert any(abs(p50 - value) <= 1e-6 for value in values)
    # Nearest rank: at least half the values are at or below p50.
    assert sum(value <= p50 + 1e-6 for value in values) * 2 >= len(values)


def test_the_evidence_moves_at_most_once_per_interval_and_only_after_new_calls() -> None:
    clock, noted = FakeClock(), [0]
    evidence = EvidenceClock(lambda: noted[0], interval=30, clock=clock)
    noted[0] = 500  # a busy worker
    assert evidence.moves() == 0  # not before the interval is up
    clock.now += 30
    assert evidence.moves() == 1
    noted[0] += 1
    clock.now += 29
    assert evidence.moves() == 1
    clock.now += 1
    assert evidence.moves() == 2
    clock.now += 300  # a quiet worker: nothing new, nothing moves
    assert evidence.moves() == 2
    never = EvidenceClock(lambda: noted[0], interval=0, clock=clock)
    noted[0] += 10
    clock.now += 1e6
    assert never.moves() == 0


def make(clock: FakeClock, **overrides: object) -> SharedCircuitBreaker:
    settings = dataclasses.replace(Settings(fail_max=3, jitter=0.0), **overrides)
    return SharedCircuitBreaker(settings, clock=clock, name="test")


def test_the_breaker_notes_each_verdict_with_how_long_it_ran_on_its_clock() -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=2, min_calls=1)
    for seconds, failed in ((1.5, False), (0.25, True), (2.0, False), (3.0, False)):
        started = breaker.clock()
        clock.now += seconds
        if failed:
            breaker.record_failure("t", DeviceFault(), started=started)
        else:  # the first, after a failure, and the last, quiet again: both are noted
            breaker.record_success("t", started=started)
    breaker.release("neutral")  # a Retry, Reject or Ignore is no evidence either way
    breaker.record_failure("lost", DeviceFault())  # a lost child: how long is unknown
    calls = breaker.shared.recent_calls(10)
    assert [(c.seconds, c.failed) for c in calls] == [
        (1.5, False), (0.25, True), (2.0, False), (3.0, False), (None, True)
    ]  # fmt: skip
    assert calls[-1].ended == clock.now


def test_call_and_calling_note_their_duration_and_neutral_outcomes_nothing() -> None:
    clock = FakeClock()
    breaker = make(clock)

    def slow() -> None:
        clock.now += 2

    breaker.call(slow)
    with breaker.calling():
        clock.now += 4
    with pytest.raises(Retry):
        breaker.call(lambda: (_ for _ in ()).throw(Retry()))
    assert [c.seconds for c in breaker.shared.recent_calls(10)] == [2, 4]


def test_the_document_sums_up_the_last_evidence_calls_of_each_breaker() -> None:
    breakers = BreakerSet(load_settings({"circuitgate_evidence_calls": 4}))
    breaker = breakers.default
    for n in range(6):
        breaker.record_success(f"t{n}", started=breaker.clock() - (n + 1))
    breaker.record_failure("t6", DeviceFault(), started=breaker.clock())
    (document,) = describe_worker("w@host", breakers, ["celery"]).breakers
    calls = document.recent_calls
    assert (calls.calls, calls.failures) == (4, 1)
    assert calls.p50_seconds == pytest.approx(5, abs=0.01)  # of 4, 5 and 6 seconds
    assert calls.p90_seconds == pytest.approx(6, abs=0.01)


def test_new_calls_move_the_documents_sequence_once_per_evidence_interval() -> None:
    clock = FakeClock()
    breakers = BreakerSet(Settings())
    breakers.evidence = EvidenceClock(breakers._calls_noted, interval=30, clock=clock)
    first = describe_worker("w@host", breakers, ["celery"]).sequence
    for n in range(50):
        breakers.default.record_success(f"t{n}", started=0.0)
    assert breakers.sequence() == first  # a busy worker does not wake its watchers per task
    clock.now += 30
    assert breakers.sequence() == first + 1
    assert describe_worker("w@host", breakers, ["celery"]).sequence == first + 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("evidence_calls", 0), ("evidence_calls", CALLS_KEPT + 1), ("evidence_seconds", -1),
     ("evidence_seconds", float("nan"))],
)  # fmt: skip
def test_evidence_settings_out_of_range_are_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(InvalidSetting, match=f"circuitgate_{key}="):
        load_settings({f"circuitgate_{key}": value})
