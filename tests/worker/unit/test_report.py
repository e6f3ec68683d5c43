"""describe_breaker / describe_worker: what a watcher is told about each breaker."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from circuitgate.breaker import SharedCircuitBreaker
from circuitgate.breaker_set import BreakerSet
from circuitgate.report import describe_breaker, describe_worker
from circuitgate.settings import Settings, load_settings
from circuitgate.shared_state import State

OPENED_AT = 1_800_000_000.0
OPEN_PERIOD = 30.0


def breaker() -> SharedCircuitBreaker:
    """A breaker that trips at a known wall-clock time for exactly OPEN_PERIOD seconds."""
    settings = Settings(fail_max=2, reset_timeout=OPEN_PERIOD, jitter=0.0)
    return SharedCircuitBreaker(settings, wall_clock=lambda: OPENED_AT)


def half_open(breaker: SharedCircuitBreaker) -> None:
    breaker.open()
    breaker.half_open()
    breaker.admit("trial")


# state -> (how to get there, consumption paused, opened_at, may_close_at)
REPORTED: dict[
    str, tuple[Callable[[SharedCircuitBreaker], object], bool, float | None, float | None]
] = {
    "closed": (lambda b: None, False, None, None),
    "open": (SharedCircuitBreaker.open, True, OPENED_AT, OPENED_AT + OPEN_PERIOD),
    "half_open": (half_open, True, OPENED_AT, OPENED_AT + OPEN_PERIOD),
    # Held open by a person: it opened, but nothing will close it on its own.
    "forced_open": (lambda b: b.force(State.FORCED_OPEN), True, OPENED_AT, None),
    "forced_closed": (lambda b: b.force(State.FORCED_CLOSED), False, None, None),
}


@pytest.mark.parametrize(
    ("state", "reach", "paused", "opened_at", "may_close_at"),
    [(state, *row) for state, row in REPORTED.items()],
    ids=REPORTED.keys(),
)
def test_each_state_says_whether_consumption_is_paused_and_when_it_may_resume(
    state: str,
    reach: Callable[[SharedCircuitBreaker], object],
    paused: bool,
    opened_at: float | None,
    may_close_at: float | None,
) -> None:
    subject = breaker()
    reach(subject)
    document = describe_breaker("gpu", subject.snapshot(), ["gpu"], ["cpu", "gpu"])
    assert document.state == state
    assert document.consumption_paused is paused
    assert document.paused_queues == (("gpu",) if paused else ())
    assert (document.opened_at, document.may_close_at) == (opened_at, may_close_at)


def test_the_counts_are_the_breakers_own() -> None:
    subject = breaker()
    subject.record_success("a")
    subject.record_failure("b", RuntimeError())
    document = describe_breaker("default", subject.snapshot(), [], ["celery"])
    assert (document.consecutive_failures, document.window_calls) == (1, 2)
    assert (document.window_failures, document.trips) == (1, 0)
    subject.record_failure("c", RuntimeError())
    document = describe_breaker("default", subject.snapshot(), [], ["celery"])
    assert (document.consecutive_failures, document.trips) == (2, 1)


def test_an_open_whole_worker_breaker_pauses_every_queue_the_worker_consumes() -> None:
    breakers = BreakerSet(load_settings({}))
    breakers.default.open()
    (document,) = describe_worker("w@host", breakers, ["cpu", "gpu"]).breakers
    assert document.name == "default"
    assert document.queues == ()  # gates all of them, named none
    assert document.paused_queues == ("cpu", "gpu")


def test_a_breaker_bound_to_queues_pauses_those_and_the_default_the_rest() -> None:
    breakers = BreakerSet(
        load_settings({"circuitgate_breakers": {"gpu": {"queues": ["gpu", "gpu-bulk"]}}})
    )
    breakers.get("gpu").open()
    before = time.time()
    report = describe_worker("w@host", breakers, ["cpu", "gpu", "gpu-bulk"])
    assert before <= report.generated_at <= time.time()
    default, gpu = report.breakers
    assert (default.name, default.queues, default.paused_queues) == ("default", ("cpu",), ())
    assert (gpu.name, gpu.queues, gpu.paused_queues) == (
        "gpu",
        ("gpu", "gpu-bulk"),
        ("gpu", "gpu-bulk"),
    )
    assert gpu.opened_at is not None and before - 1 <= gpu.opened_at <= time.time()


def test_the_sequence_stays_put_while_nothing_changes_and_grows_when_any_breaker_does() -> None:
    breakers = BreakerSet(load_settings({"circuitgate_breakers": {"gpu": {"queues": ["gpu"]}}}))
    sequences = [describe_worker("w@host", breakers, ["cpu", "gpu"]).sequence for _ in range(2)]
    assert sequences[0] == sequences[1]
    for change in (
        lambda: breakers.get("gpu").record_failure("t", RuntimeError()),
        lambda: breakers.default.open(),
        lambda: breakers.get("gpu").force(State.FORCED_OPEN),
    ):
        change()
        sequences.append(describe_worker("w@host", breakers, ["cpu", "gpu"]).sequence)
    assert sequences[1:] == sorted(set(sequences[1:]))
