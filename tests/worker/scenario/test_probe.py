"""A probe before the trial, in a real worker: while the device stays broken no message is
taken, period after period; once it works the trial runs and the queue drains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from circuitgate_devkit.lab.workers import LabWorker
from circuitgate_devkit.waiting import eventually

from .conftest import Lab
from .test_endpoint_and_control import document

pytestmark = pytest.mark.integration

CONF = {
    "circuitgate_fail_max": 2,
    "circuitgate_reset_timeout": 1,
    "circuitgate_backoff_multiplier": 1,
    "circuitgate_jitter": 0.0,
    "circuitgate_probe": "circuitgate_devkit.lab.app.device_probe",  # fails while broken
    "circuitgate_probe_timeout": 10,
}


def breaker(worker: LabWorker) -> dict[str, Any]:
    entry: dict[str, Any] = document(worker)["breakers"][0]
    return entry


def test_a_failing_probe_holds_the_trial_and_takes_no_message(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    worker = lab.worker("w", broken=True, conf=CONF)
    ids = lab.send(6, work_s=0.1)
    first = eventually(lambda: (b := breaker(worker))["probes"]["failed"] >= 1 and b, timeout=30)
    executions = len(lab.log.read())
    refused = worker.metric("circuitgate_handed_back_messages_total", reason="open")
    held = eventually(lambda: (b := breaker(worker))["probes"]["failed"] >= 4 and b, timeout=30)
    # Three more open periods ended, each probed and failed: no message came in.
    assert len(lab.log.read()) == executions
    assert worker.metric("circuitgate_handed_back_messages_total", reason="open") == refused
    assert held["state"] == "open" and held["trips"] >= first["trips"] + 3
    print(
        f"{broker_kind}: probe failed {held['probes']['failed']} times, "
        f"{executions} executions before (fail_max 2), none since the first failed probe"
    )

    worker.repair_device()
    lab.log.wait_for_successes(set(ids), timeout=60)  # the failed two were handed back
    closed = breaker(worker)
    assert closed["state"] == "closed" and closed["probes"]["passed"] == 1
