"""A pool child that dies mid-task (SIGKILL, segfault, abort) counts, and its message runs once."""

from __future__ import annotations

import pytest

from circuitgate_devkit.waiting import eventually

from .conftest import FaultLab

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
