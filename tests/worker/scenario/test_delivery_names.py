"""A delivery's name (task id, delivery number, the broker's tag) tells two messages of one
task id apart on every broker, across reconnections too: AMQP numbers its tags from 1 on
every channel, so after a reconnection a second message of a resubmitted task id came with
the first one's tag, and a lost pool child of it read as the first's hand-back (acknowledged,
never handed back)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from kombu import Connection, Queue

from circuitgate.broker_deliveries import stamp
from circuitgate.task_guard import DeliveryRecord, delivery_name

from .conftest import Lab

pytestmark = pytest.mark.integration


def test_two_messages_of_one_task_id_have_two_names_across_a_reconnection(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    for _ in range(2):  # a client that sends a fixed task id again
        lab.producer.send_task("lab.infer", task_id="fixed-id", queue="names")
    names = []
    for _ in range(2):  # each on a connection of its own, as after a reconnection
        options = lab.broker.transport_options
        with Connection(lab.broker.url, transport_options=options) as connection:
            message = Queue("names")(connection.default_channel).get(no_ack=False)
            assert message is not None
            info: dict[str, object] = {}
            stamp(info, message)
            request = SimpleNamespace(id="fixed-id", delivery_info=info)
            names.append(delivery_name(request, DeliveryRecord(1, ())))
            message.ack()
    assert names[0] != names[1]
