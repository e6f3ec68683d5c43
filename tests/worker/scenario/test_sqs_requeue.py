"""On real SQS (moto), a message the gate refuses is visible to other workers at once.

kombu's SQS transport requeues by setting the visibility to ``wait_time_seconds`` (10 s by
default); the gate sets it back to 0, so another worker's long poll gets it right away.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from circuitgate.breaker_set import BreakerSet
from circuitgate.settings import load_settings
from circuitgate_devkit.lab.brokers import sqs_broker
from circuitgate_devkit.waiting import eventually
from tests.worker.unit.test_gate import publish, started

pytestmark = pytest.mark.integration

WAIT_TIME_SECONDS = 8


def test_a_message_refused_on_sqs_is_visible_to_another_worker_at_once() -> None:
    queue = f"refusals-{uuid.uuid4().hex[:8]}"
    with sqs_broker() as broker:
        options = {**broker.transport_options, "wait_time_seconds": WAIT_TIME_SECONDS}
        with (
            Connection(broker.url, transport_options=options) as ours,
            Connection(broker.url, transport_options=options) as other,
        ):
            channel = ours.channel()
            breakers = BreakerSet(load_settings({}))
            consumer, _ = started(channel, [queue], breakers)
            publish(channel, queue, "t1")
            message = eventually(lambda: Queue(queue, routing_key=queue)(channel).get())
            breakers.default.open()
            assert consumer.handle(message) is None  # refused: back to the queue
            refused_at = time.monotonic()

            theirs = Queue(queue, routing_key=queue)(other.channel())
            again = eventually(theirs.get, timeout=2 * WAIT_TIME_SECONDS)
            elapsed = time.monotonic() - refused_at

    assert again.payload["id"] == "t1"
    assert elapsed < WAIT_TIME_SECONDS / 2, f"hidden for {elapsed:.1f} s after the refusal"
