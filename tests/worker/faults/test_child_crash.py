"""A pool child that dies mid-task (SIGKILL, segfault, abort) counts, and its message runs once."""

from __future__ import annotations

import os
import signal

import pytest

from circuitgate_devkit.lab.app import AFTER_HAND_BACK, AFTER_SUCCESS, SIGKILL_ONCE
from circuitgate_devkit.lab.workers import LabWorker
from circuitgate_devkit.waiting import eventually

from .conftest import FaultLab, Tally

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["sigkill", "segfault", "abort"])
def test_a_child_that_dies_is_a_counted_failure_and_its_task_runs_once_elsewhere(
    faults: FaultLab, how: str
) -> None:
    trips = faults.trips()
    faults.bad.break_device(how)
    ids = faults.lab.send(4, work_s=0.1)
    faults.wait_for_trip(trips)  # fail_max=4: every lost child counted
    good = faults.healthy(f"good-{how}")

    successes = faults.lab.log.wait_for_successes(set(ids), timeout=60)
    good.stop()
    row = faults.tally(f"child {how}", ids)

    assert {i: successes[i] for i in ids} == dict.fromkeys(ids, 1), row
    ran = {e.id: e.worker for e in faults.lab.log.read() if e.outcome == "success"}
    assert {ran[i] for i in ids} == {good.hostname}
    trip = faults.bad.events.of("transition", new="open")[trips]
    assert (trip.old, trip.failures) == ("closed", 4)
    faults.repair_and_close()
    eventually(lambda: faults.bad.process is not None and faults.bad.process.poll() is None)


def test_a_child_lost_after_its_task_stored_success_is_not_run_again(faults: FaultLab) -> None:
    """Celery (5.7+) acknowledges such a message as succeeded; handing it back would run a
    finished task twice and count a failure for a success."""
    counted = len(faults.bad.events.of("counted_failure"))
    faults.bad.break_device(AFTER_SUCCESS)  # the child dies once, in task_postrun
    [task_id] = faults.lab.send(1, work_s=0.05)

    # Celery's warning when right, a second run of the task when wrong.
    faults.wait_for_the_lost_child(
        f"[{task_id}] succeeded before the worker was lost",
        lambda: faults.lab.log.successes_per_task()[task_id] > 1,
    )
    faults.settle_behind(task_id)
    row = faults.tally("child lost after success", [task_id])

    assert faults.lab.log.successes_per_task()[task_id] == 1, row
    assert len(faults.bad.events.of("counted_failure")) == counted
    assert faults.state() == "closed"


def test_a_child_lost_after_handing_its_task_back_is_not_handed_back_again(
    faults: FaultLab,
) -> None:
    """The child published the copy and died before telling the main process (the OOM
    killer in cleanup): the main process acknowledges the delivery instead of publishing
    a second copy."""
    counted = len(faults.bad.events.of("counted_failure"))
    faults.bad.break_device(AFTER_HAND_BACK)  # fails, hands back, dies once
    [task_id] = faults.lab.send(1, work_s=0.05)

    # Our log line when right, a second copy delivered when wrong.
    faults.wait_for_the_lost_child(
        f"{task_id} was handed back before", lambda: faults.deliveries(task_id) > 2
    )
    faults.lab.log.wait_for_successes({task_id}, timeout=60)
    faults.settle_behind(task_id, deliveries=2)
    row = faults.tally("child lost after hand-back", [task_id])

    assert faults.lab.log.successes_per_task()[task_id] == 1, row
    assert len(faults.bad.events.of("counted_failure")) == counted + 1
    assert faults.state() == "closed"


def test_a_child_lost_on_a_task_id_that_succeeded_before_is_handed_back(
    faults: FaultLab,
) -> None:
    """A client sends a fixed id again (an idempotency key): the SUCCESS stored by the first
    message is not this one's, whose child died before storing anything."""
    [task_id] = faults.lab.send(1, work_s=0.05)
    faults.lab.log.wait_for_successes({task_id}, timeout=60)
    faults.settle_behind(task_id)
    faults.bad.break_device(SIGKILL_ONCE)
    faults.lab.producer.send_task("lab.infer", args=(1,), kwargs={"work_s": 0.05}, task_id=task_id)

    # Celery's warning when wrong, the second message's run when right.
    faults.wait_for_the_lost_child(
        f"[{task_id}] succeeded before the worker was lost",
        lambda: faults.lab.log.successes_per_task()[task_id] > 1,
    )
    assert faults.lab.log.successes_per_task()[task_id] == 2


def test_a_new_message_with_the_id_of_one_handed_back_is_not_taken_for_it(
    faults: FaultLab,
) -> None:
    """The first message of the id was handed back and its child died: that delivery is
    remembered. A new message of the same id (``Task.replace`` makes one, so does a client
    that sends a fixed id again) carries no delivery record, so only the broker's tag tells
    the two apart: its lost child must hand it back, not acknowledge it."""
    faults.bad.break_device(AFTER_HAND_BACK)
    [task_id] = faults.lab.send(1, work_s=0.05)
    faults.lab.log.wait_for_successes({task_id}, timeout=60)
    faults.settle_behind(task_id, deliveries=2)
    faults.bad.break_device(SIGKILL_ONCE)
    faults.lab.producer.send_task("lab.infer", args=(1,), kwargs={"work_s": 0.05}, task_id=task_id)

    # Our log line for the new delivery when wrong, its run when right.
    faults.wait_for_the_lost_child(
        f"{task_id} was handed back before",
        lambda: faults.lab.log.successes_per_task()[task_id] > 1,
        times=2,
    )
    faults.settle_behind(task_id, deliveries=4)
    assert faults.lab.log.successes_per_task()[task_id] == 2


def stop_mid_task(faults: FaultLab, name: str, conf: dict[str, object]) -> tuple[Tally, LabWorker]:
    """Start a worker of its own, let its task hang, send SIGTERM to the worker's whole
    process group, and let a healthy worker take the message back: what became of it."""
    queue = f"stopping-{name}"
    stopping = faults.healthy(name, queues=queue, conf=conf)
    stopping.break_device("hang")  # its task runs until the worker is stopped
    send = faults.lab.producer.send_task
    task_id = send("lab.infer", args=(0,), kwargs={"work_s": 0.05}, queue=queue).id
    eventually(lambda: stopping.events.of("started", task_id=task_id), timeout=30)
    assert stopping.process is not None
    os.killpg(stopping.process.pid, signal.SIGTERM)  # the main process and its children
    stopping.process.wait(60)
    good = faults.healthy(f"after-{name}", queues=queue)
    faults.lab.log.wait_for_successes({task_id}, timeout=60)
    good.stop()
    return faults.tally(f"{name}: stopped mid-task", [task_id]), stopping


def test_children_stopped_with_their_worker_count_nothing_and_the_task_runs_once_elsewhere(
    faults: FaultLab,
) -> None:
    """SIGTERM to the container's whole process group (``tini -g``, ``dumb-init``, a shell)
    ends the pool children with the main process: a shutdown, not a device failure. Counted,
    every rollout would trip each worker and add a trip to its node toward a cordon; put on
    the message's record, rollouts alone would make a long task poison."""
    row, stopped = stop_mid_task(faults, "stopping", {})

    assert (row.succeeded_once, row.lost, row.duplicated) == (1, 0, 0), row
    assert stopped.events.of("counted_failure") == [], "a shutdown counted as a failure"
    assert stopped.events.of("transition") == []
    assert "was stopped with its worker; requeued" in stopped.logfile.read_text()


@pytest.mark.parametrize("faults", ["redis"], indirect=True)
def test_a_child_stopped_with_its_worker_is_requeued_with_hand_back_off(faults: FaultLab) -> None:
    row, _ = stop_mid_task(faults, "no-hand-back", {"circuitgate_handback": False})
    assert (row.succeeded_once, row.lost, row.duplicated) == (1, 0, 0), row
