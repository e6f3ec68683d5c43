"""Killing or stopping a worker mid-task loses nothing (acks-late: at least once)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from circuitgate_devkit.waiting import eventually

from .conftest import Lab

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["sigkill", "warm-shutdown"])
def test_a_worker_stopped_mid_task_loses_nothing(
    make_lab: Callable[..., Lab], broker_kind: str, how: str
) -> None:
    # Messages of a SIGKILLed worker come back after the visibility timeout (SQS) or are
    # restored by the next worker (Redis); keep it short so the test does not wait long.
    lab = make_lab(broker_kind, visibility_timeout=5)
    first = lab.worker("first", concurrency=2)
    ids = lab.send(8, work_s=2.0)
    eventually(lambda: len(first.events.of("received")) >= 2, timeout=30, what="tasks to start")
    if how == "sigkill":
        first.kill()
    else:
        assert first.stop(signal.SIGTERM) == 0
    lab.worker("second", concurrency=2)

    successes = lab.log.wait_for_successes(set(ids), timeout=120)

    assert all(successes[task_id] >= 1 for task_id in ids), "a task was lost"
    # At least once, as acks-late promises. A second run is allowed only for a task that
    # finished on the stopped worker whose ack was cut off by the shutdown (celery#3802,
    # Redis warm shutdown); everything else ran exactly once.
    finished_on_first = {e.id for e in lab.log.read() if e.worker == first.hostname}
    twice = {task_id for task_id in ids if successes[task_id] > 1}
    assert twice <= finished_on_first
    assert all(successes[task_id] <= 2 for task_id in ids)
