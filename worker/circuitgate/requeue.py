"""Give a delivery back to its queue so that another worker can take it at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ("reject_request_now", "requeue_now")

logger = logging.getLogger(__name__)


def requeue_now(message: Any, reject: Callable[[], None]) -> None:
    """Call ``reject`` (a reject with requeue), then on SQS make the message visible at once.

    kombu's SQS transport requeues a message by setting its visibility to the transport's
    ``wait_time_seconds`` (10 s by default), not 0, so a refused message would sit hidden
    from every worker for that long. Redis and RabbitMQ put it back at once already.
    """
    delivery_info = getattr(message, "delivery_info", None) or {}
    queue_url = delivery_info.get("sqs_queue")  # kombu drops it from the message on requeue
    receipt = getattr(message, "delivery_tag", None)
    reject()
    if not queue_url or not receipt:
        return
    channel = message.channel
    try:
        client = channel.sqs(queue=channel.canonical_queue_name(delivery_info["routing_key"]))
        client.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
        )
    except Exception:
        # It becomes visible after wait_time_seconds anyway: late, never lost.
        logger.warning("could not make %s visible at once", receipt, exc_info=True)


def reject_request_now(request: Any, celerys_reject: Callable[[], None]) -> None:
    """Celery's ``Request.reject(requeue=True)``, done here and not at the event loop's next
    turn: Celery hands a request's reject to ``call_soon``, so a visibility set after it
    would be undone by kombu's own (SQS hides the message for ``wait_time_seconds``), and in
    a warm shutdown that next turn is the hub's close. Only in the loop's own thread, the
    main one: from a threads-pool thread the reject stays Celery's, handed to the loop (an
    AMQP channel is not to be written from two threads), and on SQS kombu's visibility may
    then come after ours (``celerys_reject`` is that reject)."""
    if request.acknowledged:
        return
    if threading.current_thread() is not threading.main_thread():
        celerys_reject()
        return
    request.message.reject_log_error(logger, request.connection_errors, requeue=True)
    request.acknowledged = True
    request.send_event("task-rejected", requeue=True)
