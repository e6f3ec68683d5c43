"""Warm shutdown on real workers and brokers: what the worker holds but has not started (waiting
for the pool's only process, for an ETA, for a rate limit's token) goes back to the queue at
once, not after its running task (nor, on SQS, after the visibility timeout), and every task
still runs exactly once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from circuitgate_devkit.lab.brokers import redis_sentinel_broker
from circuitgate_devkit.waiting import eventually
from tests.worker.scenario.conftest import Lab

pytestmark = pytest.mark.integration

# Room to hold five messages; lab.preprocess has a token every 30 s on the stopping worker.
CONF = {
    "worker_prefetch_multiplier": 5,
    "task_annotations": {"lab.preprocess": {"rate_limit": "2/m"}},
}


def test_a_warm_shutdown_hands_back_at_once_every_message_not_started(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    _hands_back_at_once(make_lab(broker_kind, visibility_timeout=300), broker_kind, CONF)


@pytest.mark.parametrize("kind", ["redis", "sqs"])
def test_a_long_poll_out_at_the_warm_shutdown_does_not_take_a_handed_back_message(
    make_lab: Callable[..., Lab], kind: str
) -> None:
    """A poll sent before the shutdown waits for its whole wait: a Redis BRPOP left unread
    would pop the first message handed back and hold it until the connection closes; on SQS
    kombu's requeue hides a message for the poll's wait (``wait_time_seconds``), and that
    must not come after the hand-back makes it visible."""
    lab = make_lab(kind, visibility_timeout=300)
    _hands_back_at_once(lab, kind, {**CONF, **_long_poll(lab, kind)})


def test_a_warm_shutdown_on_a_sentinel_broker_hands_back_at_once(tmp_path: Path) -> None:
    """kombu's ``sentinel://`` transport: the BRPOP's server is the master the Sentinel
    names, and its pool class takes other arguments; the hand-back is the same."""
    with redis_sentinel_broker(visibility_timeout=300) as broker:
        lab = Lab(broker, tmp_path)
        try:
            _hands_back_at_once(lab, "redis", {**CONF, "lab_brpop_timeout": 60})
        finally:
            lab.close()


def _long_poll(lab: Lab, kind: str) -> dict[str, object]:
    """Settings for a poll that waits long: a Redis BRPOP of 60 s, an SQS receive of 20 s."""
    if kind == "redis":
        return {"lab_brpop_timeout": 60}
    return {"broker_transport_options": {**lab.broker.transport_options, "wait_time_seconds": 20}}


@pytest.mark.parametrize("kind", ["redis", "sqs"])
def test_a_poll_out_at_the_warm_shutdown_takes_nothing_published_during_the_drain(
    make_lab: Callable[..., Lab], kind: str
) -> None:
    """Nothing held, but a long poll still out when the shutdown begins: a message published
    while the running task drains must go to another worker, not into that poll, where Redis
    has popped it (lost if the pod is killed before the drain ends) or SQS has hidden it for
    the visibility timeout."""
    lab = make_lab(kind, visibility_timeout=300)
    room = {"worker_prefetch_multiplier": 2}  # credit left while the task runs: a poll is out
    stopping = lab.worker("stopping", conf={**room, **_long_poll(lab, kind)})
    (running,) = lab.send(1, work_s=20)
    eventually(
        lambda: stopping.events.of("started", task_id=running), timeout=60, what="the task runs"
    )
    assert stopping.process is not None
    os.kill(stopping.process.pid, signal.SIGTERM)
    eventually(
        lambda: "warm shutdown: handed back 0 message(s)" in stopping.output(),
        timeout=30,
        what="the hand-back, with nothing held",
    )
    (published,) = lab.send(1, work_s=0.1)
    other = lab.worker("other")
    lab.log.wait_for_successes({published}, timeout=60)
    assert not stopping.events.of("received", task_id=published)
    assert stopping.process.wait(60) == 0
    (finished,) = stopping.events.of("finished", task_id=running)
    (received,) = other.events.of("received", task_id=published)
    assert received.at < finished.at, "the message waited for the drain"


def _hands_back_at_once(lab: Lab, broker_kind: str, conf: dict[str, object]) -> None:
    stopping = lab.worker("stopping", conf=conf)
    (first,) = lab.send(1, task="lab.preprocess", work_s=0.05)  # takes the token
    lab.log.wait_for_successes({first}, timeout=30)
    running, *waiting = lab.send(3, work_s=8)  # one runs, two wait for the only process
    eta = lab.producer.send_task("lab.infer", args=(99,), kwargs={"work_s": 0.1}, countdown=15)
    (limited,) = lab.send(1, task="lab.preprocess", work_s=0.05)  # waits for a token
    held = {*waiting, eta.id, limited}
    eventually(
        lambda: (
            {e.task_id for e in stopping.events.of("received")} == {first, running, *held}
            and stopping.events.of("started", task_id=running)
        ),
        timeout=60,
        what="the stopping worker holds four messages and runs one",
    )
    other = lab.worker("other", concurrency=3)

    assert stopping.process is not None
    os.kill(stopping.process.pid, signal.SIGTERM)  # what Kubernetes sends
    eventually(
        lambda: {e.task_id for e in other.events.of("received")} == held,
        timeout=60,
        what="the other worker receives the held messages",
    )
    assert stopping.process.wait(60) == 0  # warm: its running task ended first
    (finished,) = stopping.events.of("finished", task_id=running)
    received = [e.at for e in other.events.of("received")]
    assert max(received) < finished.at, "handed back only after the running task"

    successes = lab.log.wait_for_successes({running, *held}, timeout=60)
    assert successes == {task_id: 1 for task_id in (first, running, *held)}
    assert {e.task_id for e in stopping.events.of("started")} == {first, running}
    if broker_kind == "sqs":  # no copy restored next to an original still hidden for 300 s
        assert _sqs_messages_anywhere(lab) == 0


def _sqs_messages_anywhere(lab: Lab) -> int:
    """Messages left in the lab's SQS queues, visible or in flight (hidden)."""
    url = urlsplit(lab.broker.url)
    sqs = boto3.client(
        "sqs",
        endpoint_url=f"http://{url.hostname}:{url.port}",
        region_name=lab.broker.transport_options["region"],
        aws_access_key_id=url.username,
        aws_secret_access_key=url.password,
    )
    total = 0
    for queue in sqs.list_queues().get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        total += int(attributes["ApproximateNumberOfMessages"])
        total += int(attributes["ApproximateNumberOfMessagesNotVisible"])
    return total
