"""A hand-back whose copy the broker refuses or holds up loses nothing.

SQS refuses the copy outright (the queue's ``MaximumMessageSize`` lowered under it while
the task runs): the delivery goes back to the queue as it came. Redis holds every write
up for a while (``CLIENT PAUSE ... WRITE``): the copy goes out late. RabbitMQ refuses it
when the queue is at its ``x-max-length`` with ``x-overflow: reject-publish``, which a
publisher sees only with publisher confirms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import boto3
import pytest
import redis
from celery import Celery
from kombu import Exchange, Queue

from circuitgate_devkit.lab.brokers import Broker
from circuitgate_devkit.waiting import TimedOut, eventually

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


def send_to_the_broken_worker(faults: FaultLab, *, fail_s: float) -> str:
    """Break the device, send one padded task, and return its id once the worker has it (the
    refusal starts after: the message itself must still fit)."""
    faults.bad.break_device()
    task_id: str = faults.lab.producer.send_task(
        "lab.infer", args=(0,), kwargs={"fail_s": fail_s}, headers={"padding": PADDING}
    ).id
    eventually(
        lambda: faults.bad.events.of("received", task_id=task_id), timeout=30, what="received"
    )
    return task_id


# Not on RabbitMQ yet: a refusal the publisher sees there needs publisher confirms.
@pytest.mark.parametrize("faults", sorted(REFUSALS), indirect=True)
def test_a_hand_back_the_broker_refuses_leaves_the_message_in_the_queue(
    faults: FaultLab,
) -> None:
    trips = faults.trips()
    task_id = send_to_the_broken_worker(faults, fail_s=1.5)
    with REFUSALS[faults.kind](faults.lab.broker):
        faults.wait_for_trip(trips)  # the same message, back each time, failed fail_max times
    good = faults.healthy("good-refused")

    successes = faults.lab.log.wait_for_successes({task_id}, timeout=60)
    good.stop()
    row = faults.tally(f"hand-back refused/held ({faults.kind})", [task_id])

    assert successes[task_id] == 1, row
    faults.repair_and_close()


@pytest.mark.parametrize("faults", ["sqs"], indirect=True)
def test_a_message_whose_copy_is_refused_every_time_becomes_poison(faults: FaultLab) -> None:
    """Its copy never goes out, so its headers never count a delivery: SQS's own receive count
    does, and the message fails for good once past the delivery cap instead of going round
    for ever (and counting against every worker it reaches)."""
    task_id = send_to_the_broken_worker(faults, fail_s=0.05)
    with REFUSALS[faults.kind](faults.lab.broker):
        eventually(
            lambda: f"task {task_id}: its copy was refused" in faults.bad.logfile.read_text(),
            timeout=120,
            what="the message failed for good as poison",
        )
    row = faults.tally("copy refused every time (sqs)", [task_id], ended=frozenset({task_id}))
    assert faults.lab.log.successes_per_task()[task_id] == 0, row
    faults.repair_and_close()


BOUNDED = "bounded"
BOUNDED_QUEUES = {  # Celery's task_queues as options: what both ends declare
    BOUNDED: {
        "exchange": BOUNDED,
        "routing_key": BOUNDED,
        "queue_arguments": {"x-max-length": 1, "x-overflow": "reject-publish"},
    }
}


@pytest.mark.parametrize("faults", ["rabbitmq"], indirect=True)
def test_a_copy_rabbitmq_refuses_leaves_the_message_in_the_queue(faults: FaultLab) -> None:
    """The queue holds one ready message at most (unacknowledged ones do not count): with
    the first task running and a second one waiting, the first's copy is refused. Without
    publisher confirms the refusal went unseen, the delivery was acknowledged and the task
    lost; seen, the delivery goes back to the queue as it came."""
    conf = {"task_queues": BOUNDED_QUEUES}
    worker = faults.healthy("bounded", queues=BOUNDED, conf=conf)
    worker.break_device()
    producer = Celery("bounded-producer", set_as_current=False)
    producer.conf.update(faults.lab.broker.celery_config(), **conf)
    try:
        send = producer.send_task
        first = send("lab.infer", args=(0,), kwargs={"fail_s": 1.0}, queue=BOUNDED).id
        eventually(lambda: worker.events.of("received", task_id=first), timeout=30)
        second = send("lab.infer", args=(1,), kwargs={"work_s": 0.05}, queue=BOUNDED).id
        eventually(lambda: worker.events.of("transition", new="open"), timeout=60, what="the trip")
        worker.stop()
        good = faults.healthy("good-bounded", queues=BOUNDED, conf=conf)
        faults.lab.log.wait_for_successes({first, second}, timeout=60)
        good.stop()
    finally:
        producer.close()
    row = faults.tally("hand-back refused (rabbitmq)", [first, second])
    assert (row.succeeded_once, row.lost, row.duplicated) == (2, 0, 0), row


ROUTED = "routed"
ROUTED_QUEUES = {ROUTED: {"exchange": ROUTED, "routing_key": ROUTED}}


@pytest.mark.parametrize("faults", ["rabbitmq"], indirect=True)
def test_a_copy_rabbitmq_cannot_route_leaves_the_message_in_the_queue(faults: FaultLab) -> None:
    """A message that came through an exchange has its copy published there too, as
    Celery's ``retry()`` does. If the queue's binding is gone meanwhile (an admin's rebinding
    under a running task), RabbitMQ confirms a publish it routed nowhere. Published as
    mandatory, the copy comes back as a return, and the delivery goes back to its queue as
    it came."""
    conf = {"task_queues": ROUTED_QUEUES}
    worker = faults.healthy("routed", queues=ROUTED, conf=conf)
    worker.break_device()
    producer = Celery("routed-producer", set_as_current=False)
    producer.conf.update(faults.lab.broker.celery_config(), **conf)
    exchange = Exchange(ROUTED)
    try:
        task = producer.send_task(
            "lab.infer", args=(0,), kwargs={"fail_s": 2.0}, exchange=ROUTED, routing_key=ROUTED
        )
        eventually(lambda: worker.events.of("received", task_id=task.id), timeout=30)
        with producer.connection_for_write() as connection:
            Queue(ROUTED, exchange, ROUTED)(connection.default_channel).unbind_from(
                exchange, ROUTED
            )
        assert not worker.events.of("finished", task_id=task.id), "unbound after it ended"
        eventually(
            lambda: f"{task.id} failed" in worker.logfile.read_text(),
            timeout=30,
            what="its failure, and the copy's publish",
        )
        worker.stop()
        good = faults.healthy("good-routed", queues=ROUTED, conf=conf)  # binds it again
        with contextlib.suppress(TimedOut):  # if lost, the tally below says so
            faults.lab.log.wait_for_successes({task.id}, timeout=30)
        good.stop()
    finally:
        producer.close()
    row = faults.tally("copy unroutable (rabbitmq)", [task.id])
    assert (row.succeeded_once, row.lost, row.duplicated) == (1, 0, 0), row
