"""The half-open trial's claim on a real worker: a message Celery discards is not a trial,
and never takes the claim of the delivery that is."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from circuitgate_devkit.waiting import eventually
from tests.worker.faults.conftest import CONF

from .conftest import Lab, LabWorker

pytestmark = pytest.mark.integration


def test_a_discarded_message_with_the_trials_id_leaves_the_trial_its_claim(
    make_lab: Callable[..., Lab],
) -> None:
    """The trial X is a countdown message, so its pool process claims it as it runs; a BRPOP
    sent while the circuit was open is still out and pops a second message of id X, which
    Celery discards as invalid. The gate answers TRIAL for X again (same token, same answer),
    but the claim is the running delivery's: dropping it let another task in as a second
    trial while X ran."""
    lab = make_lab("redis", visibility_timeout=300)
    bad = lab.worker("bad", concurrency=2, conf={**CONF, "lab_brpop_timeout": 60})
    bad.break_device()
    failed = lab.send(4, work_s=0.05)
    eventually(lambda: bad.events.of("transition", new="open"), timeout=60, what="the trip")
    good = lab.worker("good", conf=CONF)
    lab.log.wait_for_successes(set(failed), timeout=60)
    good.stop()
    bad.repair_device()
    # Past the open period the worker's document names: the next message to run is the trial.
    eventually(lambda: _open_period_over(bad), timeout=30, what="the open period over")

    trial = str(uuid.uuid4())
    lab.producer.send_task("lab.infer", args=(1,), kwargs={"work_s": 10}, task_id=trial,
                           countdown=2)  # fmt: skip
    eventually(lambda: bad.events.of("started", task_id=trial), timeout=30, what="the trial")
    eventually(lambda: bad.events.of("transition", new="half_open"), timeout=10, what="claimed")
    discards = bad.output().count("Received invalid task message")
    body = {"task": "lab.infer", "id": trial, "args": [0], "kwargs": ["not", "a", "mapping"]}
    with lab.producer.producer_or_acquire() as producer:
        producer.publish(
            body, routing_key="celery", serializer="json",
            headers={"task": "lab.infer", "id": trial},
        )  # fmt: skip
    eventually(
        lambda: bad.output().count("Received invalid task message") > discards,
        timeout=30,
        what="Celery discards the duplicate",
    )
    (other,) = lab.send(1, work_s=0.05)

    lab.log.wait_for_successes({trial, other}, timeout=60)
    (finished,) = bad.events.of("finished", task_id=trial)
    started = bad.events.of("started", task_id=other)[0]
    assert finished.at <= started.at, "a second trial ran while the first one still ran"


def _open_period_over(worker: LabWorker) -> bool:
    with urllib.request.urlopen(worker.endpoint + "/circuit", timeout=10) as reply:
        (breaker,) = json.load(reply)["breakers"]
    return datetime.now(UTC) >= datetime.fromisoformat(breaker["may_close_at"])
