"""What the broker says about a delivery, handed from the main process to the pool child
(which sees the request, not the message) in the request's ``delivery_info``: how many times
the broker has delivered the message, and its tag for this delivery. Not in the headers,
which a republished copy (``retry()``, a hand-back) carries on; a copy's ``delivery_info`` is
the broker's own again, so it never carries a stale count or tag.

Our delivery record lives in the headers of the copies we publish; a delivery that goes back
to its queue as it came (its copy refused) carries the same record again. The broker's own
count still rises, so a message whose copy is refused every time still ends. The count also
rises with every refusal while a circuit is open, so it is no measure of failures and serves
only there. The tag tells this message from another with the same task id
(``Task.replace``, a client that sends a fixed id again), which the record alone cannot.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

__all__ = (
    "BROKER_HEADERS",
    "broker_deliveries",
    "delivered_by_broker",
    "delivery_tag",
    "stamp",
)

_COUNT = "circuitgate_broker_deliveries"
_TAG = "circuitgate_delivery_tag"
BROKER_HEADERS = ("x-delivery-count",)
"""Headers the broker sets on delivery, never to be published again with a copy."""


def stamp(delivery_info: dict[str, Any], message: Any) -> None:
    """Put the broker's count and tag into a request's ``delivery_info`` (of Celery's request
    dict, which the pool child's ``task.request`` is made of)."""
    count = broker_deliveries(message)
    if count is not None:
        delivery_info[_COUNT] = count
    delivery_info[_TAG] = _tag(message)


def delivered_by_broker(request: Any) -> int | None:
    """The broker's count that `stamp` put into ``request`` (a task request), if any."""
    count = (getattr(request, "delivery_info", None) or {}).get(_COUNT)
    return count if isinstance(count, int) else None


def delivery_tag(request: Any) -> str:
    """The broker's tag for this delivery that `stamp` put into ``request``, or ""."""
    return str((getattr(request, "delivery_info", None) or {}).get(_TAG) or "")


def broker_deliveries(message: Any) -> int | None:
    """This delivery's number by the broker's count: SQS's ``ApproximateReceiveCount``,
    RabbitMQ's ``x-delivery-count`` (quorum queues: earlier deliveries) plus one; None
    where the broker keeps none (Redis, RabbitMQ classic queues) or it is malformed."""
    delivery_info = getattr(message, "delivery_info", None) or {}
    sqs_message = delivery_info.get("sqs_message")
    if isinstance(sqs_message, dict):
        return _count((sqs_message.get("Attributes") or {}).get("ApproximateReceiveCount"))
    earlier = _count((getattr(message, "headers", None) or {}).get(BROKER_HEADERS[0]))
    return None if earlier is None else earlier + 1


def _tag(message: Any) -> str:
    """The broker's tag, unique in this process. SQS's receipt handles and Redis's tags are
    unique already (a Redis message keeps its tag when it comes back, which tells a
    redelivery). AMQP numbers a channel's deliveries from 1, so after a reconnection another
    message comes with an earlier one's number: an integer tag is qualified by its channel."""
    tag = getattr(message, "delivery_tag", None)
    if not isinstance(tag, int):
        return str(tag or "")
    channel = getattr(message, "channel", None)
    try:
        number = _CHANNELS.get(channel)
        if number is None:
            number = _CHANNELS[channel] = next(_CHANNEL_NUMBERS)
    except TypeError:  # not weakly referable: the tag alone
        return str(tag)
    return f"{tag}@{number}"


_CHANNELS: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
_CHANNEL_NUMBERS = itertools.count(1)


def _count(value: Any) -> int | None:
    if value is None:  # no count (Redis, classic queues): every message, so no exception
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None
