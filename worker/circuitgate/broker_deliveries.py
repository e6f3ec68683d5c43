"""What the broker says about a delivery, handed from the main process to the pool child
(which sees the request, not the message): how many times it has delivered the message, and
its tag for this delivery.

Our delivery record lives in the headers of the copies we publish; a delivery that goes back
to its queue as it came (its copy refused) carries the same record again. The broker's own
count still rises, so a message whose copy is always refused still reaches the delivery cap.
The tag tells this message from another with the same task id (``Task.replace``, a client
that sends a fixed id again), which the delivery record alone cannot.
"""

from __future__ import annotations

from typing import Any

__all__ = ("BROKER_DELIVERIES", "BROKER_HEADERS", "DELIVERY_TAG", "broker_deliveries", "stamp")

BROKER_DELIVERIES = "circuitgate_broker_deliveries"
"""The request key of the broker's count."""
DELIVERY_TAG = "circuitgate_delivery_tag"
"""The request key of the broker's tag for this delivery."""
BROKER_HEADERS = ("x-delivery-count",)
"""Headers the broker sets on delivery, never to be published again with a copy."""


def stamp(request: dict[str, Any], message: Any) -> None:
    """Put the broker's count and tag into a request (Celery's request dict, which the pool
    child's ``task.request`` is made of)."""
    count = broker_deliveries(message)
    if count is not None:
        request[BROKER_DELIVERIES] = count
    request[DELIVERY_TAG] = str(getattr(message, "delivery_tag", None) or "")


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


def _count(value: Any) -> int | None:
    try:
        count = int(value)
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None
