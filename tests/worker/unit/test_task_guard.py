"""DeliveryRecord: the hand-back headers, and when a message is poison."""

from __future__ import annotations

from types import SimpleNamespace

from circuitgate.task_guard import DELIVERIES_HEADER, FAILED_ON_HEADER, DeliveryRecord


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
