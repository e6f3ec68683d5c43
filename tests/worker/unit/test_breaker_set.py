"""BreakerSet: which breaker gates which queue."""

from __future__ import annotations

from circuitgate.breaker_set import BreakerSet, queue_of
from circuitgate.settings import load_settings


def test_queues_bound_to_a_breaker_use_it_and_the_rest_share_the_default() -> None:
    breakers = BreakerSet(
        load_settings({"circuitgate_breakers": {"gpu": {"queues": ["gpu"], "fail_max": 1}}})
    )
    gpu = breakers.get("gpu")
    assert breakers.for_queue("gpu") is gpu
    assert breakers.for_queue("cpu") is breakers.default
    assert breakers.for_queue(None) is breakers.default
    assert breakers.queues_of(gpu, ["cpu", "gpu"]) == ("gpu",)
    assert breakers.queues_of(breakers.default, ["cpu", "gpu"]) == ("cpu",)
    gpu.record_failure("t", RuntimeError())
    assert not gpu.fetch_allowed()
    assert breakers.default.fetch_allowed()  # the CPU queue keeps flowing


def test_a_single_default_breaker_gates_the_whole_worker() -> None:
    breakers = BreakerSet(load_settings({}))
    assert not breakers.per_queue
    assert breakers.names() == ["default"]
    assert breakers.queues_of(breakers.default, ["a", "b"]) == ()


def test_the_queue_of_a_message_is_its_routing_key() -> None:
    assert queue_of({"exchange": "", "routing_key": "gpu"}) == "gpu"
    assert queue_of({}) is None
    assert queue_of(None) is None
