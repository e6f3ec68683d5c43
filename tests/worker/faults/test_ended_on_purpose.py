"""A task ended on purpose (revoke with terminate, a hard time limit) is neutral and never re-run.

Each waits on what it can count, never on a sleep (`FaultLab.settle_behind`).
"""

from __future__ import annotations

import pytest

from circuitgate_devkit.waiting import eventually

from .conftest import FaultLab

pytestmark = pytest.mark.integration


def run_and_end(faults: FaultLab, fault: str, end: str) -> None:
    counted = len(faults.bad.events.of("counted_failure"))
    send = faults.lab.producer.send_task
    options = {"time_limit": 2} if end == "time limit" else {}
    task_id = send("lab.infer", args=(0,), kwargs={"work_s": 60}, **options).id
    eventually(lambda: faults.bad.events.of("received", task_id=task_id), timeout=30)
    if end == "revoke":
        faults.lab.producer.control.revoke(task_id, terminate=True)

    faults.settle_behind(task_id)
    row = faults.tally(fault, [task_id], ended=frozenset({task_id}))

    assert faults.lab.log.successes_per_task()[task_id] == 0, row
    assert len(faults.bad.events.of("counted_failure")) == counted
    assert faults.state() == "closed"


def test_a_hard_time_limit_is_neutral_and_the_task_is_not_run_again(faults: FaultLab) -> None:
    run_and_end(faults, "hard time limit", "time limit")


# Not on SQS: it has no broadcast, so Celery's remote control (revoke) never reaches a worker.
@pytest.mark.parametrize("faults", ["rabbitmq", "redis"], indirect=True)
def test_a_task_revoked_with_terminate_is_neutral_and_never_runs_again(
    faults: FaultLab,
) -> None:
    run_and_end(faults, "revoke(terminate=True)", "revoke")
