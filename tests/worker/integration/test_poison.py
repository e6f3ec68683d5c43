"""A message that fails everywhere is poison, not evidence against the workers it lands on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import Lab, log_events

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
    lab.log.wait_for_successes({poison}, timeout=5)  # gives the poison's last delivery time

    assert {task_id: successes[task_id] for task_id in ids} == dict.fromkeys(ids, 1)
    poison_runs = [e for e in lab.log.read() if e.id == poison]
    # Two counted deliveries, handed back; the third fails for good, uncounted.
    assert [e.outcome for e in poison_runs] == ["failure"] * 3
    for worker in workers:
        assert not log_events(worker, r"-> open"), f"{worker.name} tripped on a poison message"
    assert sum(len(log_events(w, r"failing it for good without counting")) for w in workers) == 1
