"""A broken worker among healthy ones stops consuming; every task succeeds once elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from circuitgate_devkit.lab.app import SLOW
from circuitgate_devkit.waiting import eventually

from .conftest import Lab

pytestmark = pytest.mark.integration

CONF = {"circuitgate_fail_max": 3, "circuitgate_reset_timeout": 3, "circuitgate_jitter": 0.0}


def test_every_task_succeeds_exactly_once_on_a_healthy_worker(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    # A visibility timeout far beyond the wait below: a message held for it would fail the test.
    lab = make_lab(broker_kind, visibility_timeout=300)
    bad = lab.worker("bad", broken=True, concurrency=2, conf=CONF)
    lab.worker("good1", concurrency=2, conf=CONF)
    lab.worker("good2", concurrency=2, conf=CONF)
    ids = lab.send(30, work_s=0.3)

    successes = lab.log.wait_for_successes(set(ids), timeout=90)

    assert {task_id: successes[task_id] for task_id in ids} == dict.fromkeys(ids, 1)
    by_worker = lab.log.by_worker()
    assert all(e.outcome == "failure" for e in by_worker[bad.hostname])
    assert len(by_worker[bad.hostname]) < len(ids) / 2
    assert bad.events.of("transition", old="closed", new="open")


def test_consumption_stops_within_one_poll_and_one_trial_per_half_open(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    conf = {**CONF, "circuitgate_fail_max": 2, "circuitgate_reset_timeout": 2,
            "circuitgate_backoff_multiplier": 1.0}  # fmt: skip
    bad = lab.worker("bad", broken=True, concurrency=2, conf=conf)
    lab.send(40, work_s=0.3)
    eventually(
        lambda: len(bad.events.of("transition", old="half_open", new="open")) >= 2,
        timeout=60,
        what="two failed trials",
    )
    bad.stop()

    trips = bad.events.of("transition", new="open")
    half_opens = bad.events.of("transition", old="open", new="half_open")
    received = [e.at for e in bad.events.of("received")]
    starts = sorted(e.start for e in lab.log.read())
    prefetch = 2  # concurrency x worker_prefetch_multiplier
    for trip, reopen in zip(trips, half_opens, strict=False):
        assert not [t for t in received if trip.at + 0.01 < t < reopen.at - 0.01], (
            "fetched while open"
        )
        # Only what one poll had already brought in goes back to the queue unexecuted.
        assert reopen.refused is not None and trip.refused is not None
        assert reopen.refused - trip.refused <= prefetch
    for opened, next_trip in zip(half_opens, trips[1:], strict=False):
        assert len([s for s in starts if opened.at - 0.01 <= s <= next_trip.at + 0.01]) == 1


def test_the_worker_recovers_when_the_fault_clears(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    bad = lab.worker("bad", broken=True, concurrency=2, conf=CONF)
    first = lab.send(3, work_s=0.1)
    eventually(lambda: bad.events.of("transition", new="open"), timeout=30, what="the trip")
    bad.repair_device()
    rest = lab.send(10, work_s=0.1)

    successes = lab.log.wait_for_successes(set(first + rest), timeout=60)

    assert {task_id: successes[task_id] for task_id in first + rest} == dict.fromkeys(
        first + rest, 1
    )
    assert bad.events.of("transition", old="half_open", new="closed")


@pytest.mark.parametrize(
    ("pool", "concurrency", "extra_args"),
    [
        ("prefork", 4, ()),
        ("prefork", 4, ("--max-tasks-per-child", "1")),
        ("threads", 4, ()),
        ("solo", 1, ()),
    ],
    ids=["prefork", "prefork-max-tasks-per-child", "threads", "solo"],
)
def test_the_pool_trips_after_fail_max_failures_in_total_not_per_child(
    make_lab: Callable[..., Lab], pool: str, concurrency: int, extra_args: tuple[str, ...]
) -> None:
    lab = make_lab("redis")
    conf = {**CONF, "circuitgate_fail_max": 4, "circuitgate_reset_timeout": 300}
    bad = lab.worker(
        "bad", broken=True, pool=pool, concurrency=concurrency, extra_args=extra_args, conf=conf
    )
    ids = lab.send(40, work_s=0.1)
    eventually(lambda: bad.events.of("transition", new="open"), timeout=30, what="the trip")
    eventually(lambda: len(lab.log.read()) >= 4, timeout=10, what="the failures to be logged")
    bad.wait_for_polls(3)  # chances to fetch since the trip: whatever they let in has run

    executions = lab.log.read()
    # fail_max counted failures, plus at most the tasks already running in the other slots.
    assert 4 <= len(executions) <= 4 + concurrency - 1
    trip = bad.events.of("transition", old="closed", new="open", failures=4, trips=1)
    assert len(trip) == 1
    lab.worker("good", concurrency=4, conf=conf)
    successes = lab.log.wait_for_successes(set(ids), timeout=60)
    assert {task_id: successes[task_id] for task_id in ids} == dict.fromkeys(ids, 1)


def test_a_slow_worker_trips_by_its_slow_call_rate_and_every_task_still_succeeds_once(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab("redis")  # the rule is the breaker's, the same on every broker
    conf = {
        **CONF,
        "circuitgate_slow_call_seconds": 0.6,
        "circuitgate_slow_call_rate_threshold": 0.5,
        "circuitgate_window_size": 4,
        "circuitgate_min_calls": 4,
        "circuitgate_reset_timeout": 60,
    }
    slow = lab.worker("slow", concurrency=2, conf=conf)
    slow.break_device(SLOW)  # 0.9 s a task instead of 0.3
    lab.worker("good", concurrency=2, conf=conf)
    ids = lab.send(30, work_s=0.3)

    successes = lab.log.wait_for_successes(set(ids), timeout=90)

    assert {task_id: successes[task_id] for task_id in ids} == dict.fromkeys(ids, 1)
    assert slow.events.of("transition", old="closed", new="open")
    by_worker = lab.log.by_worker()
    assert all(e.outcome == "success" for e in by_worker[slow.hostname])  # slow, not failing
    # Its window of four, then only what it held at the trip (two running, two prefetched).
    assert len(by_worker[slow.hostname]) <= 4 + 4
