"""A hand-back whose copy the broker refuses or holds up loses nothing.

SQS refuses the copy outright (the queue's ``MaximumMessageSize`` lowered under it while
the task runs): the delivery goes back to the queue as it came. Redis holds every write
up for a while (``CLIENT PAUSE ... WRITE``): the copy goes out late. RabbitMQ has no
refusal a publisher sees (an unroutable or blocked publish is dropped or waits), so it
is not among these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import boto3
import pytest
import redis

from circuitgate_devkit.lab.brokers import Broker
from circuitgate_devkit.waiting import eventually

from .conftest import FaultLab

pytestmark = pytest.mark.integration

PADDING = "x" * 2048  # the message is larger than the lowered size limit, its copy too


@contextlib.contextmanager
def sqs_refuses(broker: Broker) -> Iterator[None]:
    url = urlsplit(broker.url)
    sqs = boto3.client(
        "sqs",
        endpoint_url=f"http://{url.hostname}:{url.port}",
        region_name="us-east-1",
        aws_access_key_id="lab",
        aws_secret_access_key="lab",
    )
    queue = sqs.get_queue_url(QueueName="celery")["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"MaximumMessageSize": "1024"})
    try:
        yield
    finally:
        sqs.set_queue_attributes(QueueUrl=queue, Attributes={"MaximumMessageSize": "262144"})


@contextlib.contextmanager
def redis_pauses(broker: Broker) -> Iterator[None]:
    client = redis.Redis.from_url(broker.url)
    client.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
    try:
        yield
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()


REFUSALS: dict[str, Callable[[Broker], contextlib.AbstractContextManager[None]]] = {
    "sqs": sqs_refuses,
    "redis": redis_pauses,
}


# Not on RabbitMQ yet: a refusal the publisher sees there needs publisher confirms.
@pytest.mark.parametrize("faults", sorted(REFUSALS), indirect=True)
def test_a_hand_back_the_broker_refuses_leaves_the_message_in_the_queue(
    faults: FaultLab,
) -> None:
    trips = faults.trips()
    faults.bad.break_device()
    task_id = faults.lab.producer.send_task(
        "lab.infer", args=(0,), kwargs={"fail_s": 1.5}, headers={"padding": PADDING}
    ).id
    eventually(
        lambda: faults.bad.events.of("received", task_id=task_id), timeout=30, what="received"
    )
    with REFUSALS[faults.kind](faults.lab.broker):
        faults.wait_for_trip(trips)  # the same message, back each time, failed fail_max times
    good = faults.healthy("good-refused")

    successes = faults.lab.log.wait_for_successes({task_id}, timeout=60)
    good.stop()
    row = faults.tally(f"hand-back refused/held ({faults.kind})", [task_id])

    assert successes[task_id] == 1, row
    faults.repair_and_close()
