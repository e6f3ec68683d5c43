"""A message that fails everywhere is poison, not evidence against the workers it lands on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from circuitgate_devkit.waiting import eventually

from .conftest import Lab

pytestmark = pytest.mark.integration


def test_a_poison_message_does_not_trip_every_worker(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    conf = {"circuitgate_fail_max": 3, "circuitgate_max_deliveries": 2}
    workers = [lab.worker(f"w{i}", conf=conf) for i in range(3)]
    poison = lab.producer.send_task("lab.infer", args=(-1,), kwargs={"poison": True}).id
    ids = lab.send(12, work_s=0.1)

    successes = lab.log.wait_for_successes(set(ids), timeout=60)

    def ends() -> list[str]:
        """How the poison's executions ended (Celery's states), on every worker."""
        return [e.state or "" for w in workers for e in w.events.of("finished", task_id=poison)]

    # The verdict is its one final failure: nothing runs it after that.
    eventually(lambda: "FAILURE" in ends(), timeout=30, what="the poison verdict")

    assert {task_id: successes[task_id] for task_id in ids} == dict.fromkeys(ids, 1)
    poison_runs = [e for e in lab.log.read() if e.id == poison]
    # Counted and handed back until it has failed on two different workers; the next
    # failure is the poison verdict: it fails for good, uncounted.
    assert all(e.outcome == "failure" for e in poison_runs)
    assert len({e.worker for e in poison_runs[:-1]}) == 2
    assert 3 <= len(poison_runs) <= 4 * 2
    for worker in workers:
        assert not worker.events.of("transition", new="open"), f"{worker.name} tripped on it"
    # Every execution but the verdict was counted and handed back; the verdict was not counted.
    assert sorted(ends()) == ["FAILURE"] + ["IGNORED"] * (len(poison_runs) - 1)
    assert sum(len(w.events.of("counted_failure")) for w in workers) == len(poison_runs) - 1
