"""The task guard: the hand-back headers, when a message is poison, and neutral outcomes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry

from circuitgate.breaker import SharedCircuitBreaker
from circuitgate.breaker_set import BreakerSet
from circuitgate.broker_deliveries import broker_deliveries, stamp
from circuitgate.settings import load_settings
from circuitgate.shared_state import State
from circuitgate.task_guard import (
    DELIVERIES_HEADER,
    FAILED_ON_HEADER,
    DeliveryRecord,
    delivery_name,
    guard,
    refused_too_often,
)


def request(**headers: object) -> SimpleNamespace:
    return SimpleNamespace(headers=headers)


def test_a_fresh_message_is_delivery_one_and_failed_nowhere() -> None:
    assert DeliveryRecord.from_request(request()) == DeliveryRecord(1, ())
    assert DeliveryRecord.from_request(SimpleNamespace(headers=None)) == DeliveryRecord(1, ())


def test_malformed_headers_read_as_a_fresh_message() -> None:
    record = DeliveryRecord.from_request(request(**{DELIVERIES_HEADER: "x", FAILED_ON_HEADER: 5}))
    assert record == DeliveryRecord(1, ())


def test_the_same_broken_worker_failing_it_again_does_not_make_it_poison() -> None:
    record = DeliveryRecord()
    for _ in range(5):
        record = DeliveryRecord.from_request(request(**record.after_failure_on("gpu1@host")))
    assert record.failed_on == ("gpu1@host",)
    assert record.delivery == 6
    assert not record.is_poison(3)


def test_poison_after_failing_on_k_workers_or_after_the_delivery_cap() -> None:
    record = DeliveryRecord()
    for worker in ("a", "b", "c"):
        assert not record.is_poison(3)
        record = DeliveryRecord.from_request(request(**record.after_failure_on(worker)))
    assert record.is_poison(3)
    assert DeliveryRecord(delivery=13, failed_on=("a",)).is_poison(3)
    assert not DeliveryRecord(delivery=12, failed_on=("a",)).is_poison(3)


def test_the_brokers_count_ends_only_a_delivery_whose_copy_was_refused() -> None:
    """The broker's count rises with every refusal while a circuit is open too, so it never
    makes a message poison; it only stops one whose copy is refused every time."""
    info: dict[str, object] = {}
    stamp(info, SimpleNamespace(delivery_info={"sqs_message": {"Attributes": {
        "ApproximateReceiveCount": "13"}}}, delivery_tag="receipt-1"))  # fmt: skip
    requeued = SimpleNamespace(id="t1", headers={DELIVERIES_HEADER: 2}, delivery_info=info)
    assert DeliveryRecord.from_request(requeued).delivery == 2
    assert not DeliveryRecord.from_request(requeued).is_poison(3)
    assert refused_too_often(requeued, 3)
    assert not refused_too_often(requeued, 4)  # 13 deliveries are within 4 x 4
    assert not refused_too_often(SimpleNamespace(id="t2", delivery_info={}), 3)  # Redis
    assert delivery_name(requeued, DeliveryRecord(2)) == "t1\x002\x00receipt-1"


@pytest.mark.parametrize(
    ("delivery_info", "headers", "count"),
    [
        ({"sqs_message": {"Attributes": {"ApproximateReceiveCount": "7"}}}, {}, 7),
        ({"sqs_message": {"Attributes": {}}}, {}, None),
        ({"sqs_message": {"Attributes": {"ApproximateReceiveCount": "many"}}}, {}, None),
        ({}, {"x-delivery-count": 2}, 3),  # RabbitMQ quorum queue: earlier deliveries
        ({}, {"x-delivery-count": -1}, None),
        ({}, {}, None),  # Redis, RabbitMQ classic queues
    ],
)
def test_the_brokers_count_is_read_where_it_keeps_one(
    delivery_info: dict[str, object], headers: dict[str, object], count: int | None
) -> None:
    message = SimpleNamespace(delivery_info=delivery_info, headers=headers)
    assert broker_deliveries(message) == count


# -- outcomes: Celery's control flow is neutral, neither success nor failure ------------------


def guarded(raises: BaseException, **conf: object) -> tuple[Task, SharedCircuitBreaker]:
    """A task of a throwaway app that raises ``raises``, guarded by a breaker of its own."""
    app = Celery("unit", set_as_current=False)

    @app.task(name="unit.raises")
    def raising() -> None:
        raise raises

    breakers = BreakerSet(load_settings({"circuitgate_reset_timeout": 30, **conf}))
    guard(raising, breakers)
    return raising, breakers.default


@pytest.mark.parametrize("neutral", [Retry(), Reject(requeue=False), Ignore(), KeyError("ignored")])
def test_a_trial_that_ended_neutral_does_not_close_the_circuit(neutral: BaseException) -> None:
    task, breaker = guarded(neutral, circuitgate_ignore_exceptions=["builtins.KeyError"])
    breaker.open()
    breaker.half_open()
    task.apply(task_id="trial")
    snapshot = breaker.snapshot()
    assert snapshot.state is not State.CLOSED
    assert snapshot.successes_total == 0


def test_a_retry_does_not_reset_the_failure_counter() -> None:
    task, breaker = guarded(Retry(), circuitgate_fail_max=3)
    breaker.record_failure("earlier", RuntimeError("device"))
    task.apply(task_id="retried")
    assert breaker.snapshot().fail_counter == 1


def test_a_task_id_that_is_no_string_runs_as_the_trial() -> None:
    """Celery runs a message whose id is an integer; the guard reads it as a token."""
    task, breaker = guarded(RuntimeError("device"))
    breaker.open()
    breaker.half_open()
    before = breaker.snapshot().trips
    task.apply(task_id=5)  # type: ignore[arg-type]
    assert breaker.snapshot().trips == before + 1  # the trial ran, failed, opened it again
