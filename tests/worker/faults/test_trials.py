"""Faults around the half-open trial: hung devices, ETA messages, long tasks, odd task ids."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from circuitgate_devkit.waiting import eventually

from .conftest import FaultLab

pytestmark = pytest.mark.integration


def trip_and_drain(faults: FaultLab, how: str, name: str, **send: object) -> list[str]:
    """Break the device ``how``, trip it with four tasks, and let a healthy worker run them."""
    trips = faults.trips()
    faults.bad.break_device(how)
    send_task = faults.lab.producer.send_task
    ids = [send_task("lab.infer", args=(n,), **send).id for n in range(4)]  # type: ignore[arg-type]
    faults.wait_for_trip(trips)
    good = faults.healthy(f"good-{name}")
    faults.lab.log.wait_for_successes(set(ids), timeout=60)
    good.stop()
    return ids


def test_a_hung_device_ended_by_the_soft_time_limit_counts_and_the_task_runs_once(
    faults: FaultLab,
) -> None:
    ids = trip_and_drain(faults, "hang", "hang", kwargs={"work_s": 0.1}, soft_time_limit=1.5)
    row = faults.tally("hung device, soft time limit", ids)
    assert (row.succeeded_once, row.lost, row.duplicated) == (4, 0, 0), row
    faults.repair_and_close()


def test_unicode_task_ids_longer_than_the_trial_slot_do_not_stop_the_worker(
    faults: FaultLab,
) -> None:
    trips = faults.trips()
    faults.bad.break_device()
    send_task = faults.lab.producer.send_task
    ids = [send_task("lab.infer", args=(n,), task_id=f"t{n}-" + "ü" * 40).id for n in range(4)]
    faults.wait_for_trip(trips)
    good = faults.healthy("good-unicode")
    faults.lab.log.wait_for_successes(set(ids), timeout=60)
    good.stop()
    row = faults.tally("unicode ids over 64 bytes", ids)

    assert (row.succeeded_once, row.lost, row.duplicated) == (4, 0, 0), row
    faults.repair_and_close()  # the trial, a unicode id too, is claimed and closes
    assert faults.bad.process is not None and faults.bad.process.poll() is None


def send_hybrid(faults: FaultLab, countdown: float) -> str:
    """A hybrid protocol 1/2 message, as some non-Celery clients send: the task's name and id
    in the headers, everything else (its ETA too) in a protocol 1 body."""
    task_id = str(uuid.uuid4())
    eta = datetime.now(UTC) + timedelta(seconds=countdown)
    body = {"task": "lab.infer", "id": task_id, "args": [0], "kwargs": {"work_s": 0.05},
            "eta": eta.isoformat(), "retries": 0, "utc": True}  # fmt: skip
    with faults.lab.producer.producer_or_acquire() as producer:
        producer.publish(
            body, routing_key="celery", serializer="json",
            headers={"task": "lab.infer", "id": task_id},
        )  # fmt: skip
    return task_id


def eta_trial(faults: FaultLab, fault: str, send_later: Callable[[], str]) -> None:
    """Trip, repair, send a message due in 10 s, then one due now: the one due now must be
    the trial and close the circuit before the ETA comes."""
    ids = trip_and_drain(faults, "", "eta", kwargs={"work_s": 0.1})
    faults.bad.repair_device()
    eventually(lambda: faults.state() == "half_open" or faults.state() == "open", timeout=10)
    later = send_later()
    eventually(lambda: faults.bad.events.of("received", task_id=later), timeout=30)
    now = faults.lab.send(1, work_s=0.05)

    faults.lab.log.wait_for_successes(set(now), timeout=30)
    closed_at = eventually(
        lambda: faults.bad.events.of("transition", new="closed")[-1:], timeout=10
    )[0].at
    successes = faults.lab.log.wait_for_successes({later}, timeout=60)
    eta_run = next(e for e in faults.lab.log.read() if e.id == later)
    row = faults.tally(fault, [*ids, later])

    assert successes[later] == 1, row
    assert closed_at < eta_run.start, "the circuit waited for the ETA message"
    assert (row.lost, row.duplicated) == (0, 0), row


def test_an_eta_message_arriving_as_the_trial_does_not_hold_the_worker_paused(
    faults: FaultLab,
) -> None:
    def send_later() -> str:
        options = {"kwargs": {"work_s": 0.05}, "countdown": 10}
        return str(faults.lab.producer.send_task("lab.infer", args=(0,), **options).id)

    eta_trial(faults, "ETA message as the trial", send_later)


# The gate reads the fields as Celery's strategy does, whatever the broker: one is enough.
@pytest.mark.parametrize("faults", ["redis"], indirect=True)
def test_a_hybrid_message_with_its_eta_in_the_body_is_not_claimed_as_the_trial(
    faults: FaultLab,
) -> None:
    eta_trial(faults, "hybrid ETA message as trial", lambda: send_hybrid(faults, countdown=10))


# Celery's own check of the message, the same whatever the broker: one is enough.
@pytest.mark.parametrize("faults", ["redis"], indirect=True)
def test_a_message_celery_discards_as_invalid_gives_the_trial_back(faults: FaultLab) -> None:
    """A hybrid message whose kwargs are no mapping passes the gate, is claimed as the trial,
    and then Celery's strategy refuses to make a request of it (``InvalidTaskError``) and
    discards it: the claim must go with it, not hold the worker paused for trial_timeout."""
    ids = trip_and_drain(faults, "", "invalid", kwargs={"work_s": 0.1})
    faults.bad.repair_device()
    assert faults.state() in ("open", "half_open")
    discards = faults.bad.output().count("Received invalid task message")
    invalid = str(uuid.uuid4())
    body = {"task": "lab.infer", "id": invalid, "args": [0], "kwargs": ["not", "a", "mapping"]}
    with faults.lab.producer.producer_or_acquire() as producer:
        producer.publish(
            body, routing_key="celery", serializer="json",
            headers={"task": "lab.infer", "id": invalid},
        )  # fmt: skip
    eventually(
        lambda: faults.bad.output().count("Received invalid task message") > discards,
        timeout=30,
        what="Celery discards the invalid message",
    )
    now = faults.lab.send(1, work_s=0.05)

    successes = faults.lab.log.wait_for_successes(set(now), timeout=30)
    assert successes[now[0]] == 1, f"the trial's claim outlived its message: {faults.state()}"
    eventually(lambda: faults.state() == "closed", timeout=10)
    row = faults.tally("invalid message as the trial", [*ids, *now])
    assert (row.succeeded_once, row.lost, row.duplicated) == (5, 0, 0), row


def test_healthy_tasks_longer_than_trial_timeout_close_the_circuit(faults: FaultLab) -> None:
    # A worker of its own: a short trial_timeout, and two pool processes, so a second trial
    # would have room to start if the first one's claim lapsed while it runs.
    slow = faults.healthy("slow", concurrency=2, conf={"circuitgate_trial_timeout": 0.5})
    slow.break_device()
    ids = faults.lab.send(4, work_s=2.0)
    eventually(
        lambda: slow.events.of("transition", new="open"), timeout=60, what="slow worker trips"
    )
    slow.repair_device()  # the four handed-back copies now run 2 s each, four trial_timeouts

    closed = eventually(
        lambda: slow.events.of("transition", new="closed"), timeout=60, what="closes"
    )
    faults.lab.log.wait_for_successes(set(ids), timeout=60)
    slow.stop()
    row = faults.tally("tasks longer than trial_timeout", ids)

    assert (row.succeeded_once, row.lost, row.duplicated) == (4, 0, 0), row
    half_open = slow.events.of("transition", old="open", new="half_open")[-1]
    runs = [
        e for e in faults.lab.log.read() if e.worker == slow.hostname and e.outcome == "success"
    ]
    trials = [e for e in runs if half_open.at - 0.05 <= e.start < closed[0].at]
    assert len(trials) == 1, "a second trial started while the first one ran"


# Not on SQS: it has no broadcast, so Celery's remote control (revoke) never reaches a worker.
@pytest.mark.parametrize("faults", ["rabbitmq", "redis"], indirect=True)
def test_a_trial_revoked_before_it_runs_gives_the_trial_back(faults: FaultLab) -> None:
    """Revoked by a stamped header (or by id after it was fetched), a message is claimed as
    the trial and then discarded by Celery without running: the claim must go with it."""
    ids = trip_and_drain(faults, "", "revoked", kwargs={"work_s": 0.1})
    faults.bad.repair_device()
    assert faults.state() in ("open", "half_open")
    producer = faults.lab.producer
    producer.control.revoke_by_stamped_headers(
        {"batch": "cancelled"}, destination=[faults.bad.hostname], reply=True, timeout=10
    )
    signature = producer.signature("lab.infer", args=(0,), kwargs={"work_s": 0.05})
    signature.stamp(batch="cancelled")
    cancelled = signature.apply_async().id
    eventually(lambda: faults.bad.events.of("received", task_id=cancelled), timeout=30)
    now = faults.lab.send(1, work_s=0.05)

    successes = faults.lab.log.wait_for_successes(set(now), timeout=30)
    assert successes[now[0]] == 1, f"the trial's claim outlived its message: {faults.state()}"
    eventually(lambda: faults.state() == "closed", timeout=10)
    row = faults.tally("trial revoked by stamp", [*ids, *now, cancelled], ended={cancelled})
    assert faults.lab.log.successes_per_task()[cancelled] == 0, row
    assert (row.succeeded_once, row.lost, row.duplicated) == (5, 0, 0), row


# Celery's remote control sets the rate limit: not on SQS, which has no broadcast. The fix is
# in the gate's strategy, the same on every broker.
@pytest.mark.parametrize("faults", ["redis"], indirect=True)
def test_a_rate_limited_message_waiting_for_its_token_does_not_hold_the_trial(
    faults: FaultLab,
) -> None:
    # A worker and a queue of its own: room to prefetch past a message waiting for its token
    # (with one slot Celery itself fetches nothing more until that one runs), and no
    # hand-back, so its trip leaves no copies to drain.
    queue = "rate-limited"
    conf = {"worker_prefetch_multiplier": 4, "circuitgate_handback": False}
    worker = faults.healthy("limiter", queues=queue, conf=conf)
    control = faults.lab.producer.control
    where = {"destination": [worker.hostname], "reply": True, "timeout": 10}
    control.rate_limit("lab.preprocess", "2/m", **where)  # a token every 30 s
    send = functools.partial(faults.lab.producer.send_task, queue=queue)
    try:
        first = send("lab.preprocess", args=(0,), kwargs={"work_s": 0.05}).id
        faults.lab.log.wait_for_successes({first}, timeout=30)  # the bucket is empty now
        worker.break_device()
        failed = [send("lab.infer", args=(n,), kwargs={"work_s": 0.05}).id for n in range(4)]
        eventually(lambda: worker.events.of("transition", new="open"), timeout=30)
        worker.repair_device()
        limited = send("lab.preprocess", args=(1,), kwargs={"work_s": 0.05}).id
        eventually(lambda: worker.events.of("received", task_id=limited), timeout=30)
        now = send("lab.infer", args=(4,), kwargs={"work_s": 0.05}).id

        successes = faults.lab.log.wait_for_successes({now}, timeout=20)
        assert successes[now] == 1, "the trial waited for the rate limit's token"
        closed_at = worker.events.of("transition", new="closed")[-1].at
        successes = faults.lab.log.wait_for_successes({limited}, timeout=60)
    finally:
        control.rate_limit("lab.preprocess", None, **where)
        worker.stop()
    limited_run = next(e for e in faults.lab.log.read() if e.id == limited)
    ids = [first, *failed, now, limited]
    row = faults.tally("rate-limited message as trial", ids, ended=frozenset(failed))

    assert closed_at < limited_run.start, row
    assert (row.succeeded_once, row.failed_normally, row.lost, row.duplicated) == (3, 4, 0, 0), row
