"""A breaker bound to the GPU queue pauses only that queue; the CPU queue keeps flowing."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest

from circuitgate_devkit.waiting import eventually

from .conftest import Lab

pytestmark = pytest.mark.integration


def test_only_the_broken_devices_queue_pauses(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    conf = {
        "circuitgate_breakers": {"gpu": {"queues": ["gpu"], "fail_max": 2, "reset_timeout": 300}},
    }
    worker = lab.worker("w", broken=True, concurrency=2, queues="gpu,cpu", conf=conf)
    gpu = lab.send(10, queue="gpu", work_s=0.1)
    eventually(
        lambda: worker.events.of("transition", circuit="gpu", old="closed", new="open"),
        timeout=30,
        what="the trip",
    )
    # The pauser looks at the GPU breaker on every tick: two ticks on, it has paused the queue.
    worker.wait_for_polls(2, breaker="gpu")
    ran_on_gpu = {e.id for e in lab.log.read()}

    cpu = lab.send(10, task="lab.preprocess", queue="cpu", work_s=0.05)
    successes = lab.log.wait_for_successes(set(cpu), timeout=30)

    assert {i: successes[i] for i in cpu} == dict.fromkeys(cpu, 1)
    assert {e.id for e in lab.log.read() if e.id in gpu} == ran_on_gpu, "GPU work ran while open"
    assert len(ran_on_gpu) <= 2 + 1  # fail_max, plus the task in the other slot
    with urllib.request.urlopen(worker.endpoint + "/circuit", timeout=10) as reply:
        document = json.load(reply)
    breakers = {b["name"]: b for b in document["breakers"]}
    assert breakers["gpu"]["state"] == "open"
    assert breakers["gpu"]["paused_queues"] == ["gpu"]
    assert breakers["default"]["state"] == "closed"
    assert breakers["default"]["queues"] == ["cpu"]
    # A queue is paused only while its breaker refuses fetches: the CPU queue's never changed.
    assert not worker.events.of("transition", circuit="default")

    # The GPU work is still in the queue, not lost: a healthy worker finishes it.
    lab.worker("healthy", concurrency=2, queues="gpu", conf=conf)
    successes = lab.log.wait_for_successes(set(gpu), timeout=60)
    assert {i: successes[i] for i in gpu} == dict.fromkeys(gpu, 1)
