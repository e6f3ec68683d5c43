"""Kubernetes Events about any object (pods, nodes, policies), aggregated the way kubelet's are.

Not ``kopf.event``: that one is for the object being handled and drops failed posts. Here the
same object, reason and message always map to one Event (a deterministic name), so a repeat
bumps its ``count`` and ``lastTimestamp`` instead of adding another object, also across
restarts of the operator. Posting is queued and done by a background task, so a slow API
server never holds up a decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time

from ..clock import rfc3339
from ..decide.intents import EventIntent
from .api import MERGE_PATCH, ApiError, KubeApi

__all__ = ("EventRecorder", "event_body", "event_name")

logger = logging.getLogger(__name__)

COMPONENT = "circuitgate-operator"
REPORTING_COMPONENT = "circuitgate.io/operator"


def event_name(intent: EventIntent) -> str:
    """One name per object, type, reason and message: a repeat is the same Event."""
    ref = intent.ref
    digest = hashlib.sha256(
        "\0".join(
            (ref.kind, ref.namespace, ref.name, ref.uid, intent.type, intent.reason, intent.message)
        ).encode()
    ).hexdigest()[:16]
    return f"{ref.name[:200]}.{digest}"


def event_body(
    intent: EventIntent, name: str, namespace: str, stamp: str, instance: str
) -> dict[str, object]:
    """A new core/v1 Event, counted once, reported by this operator replica (``instance``)."""
    ref = intent.ref
    involved = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name}
    if ref.namespace:
        involved["namespace"] = ref.namespace
    if ref.uid:
        involved["uid"] = ref.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": involved,
        "reason": intent.reason,
        "message": intent.message[:1024],
        "type": intent.type,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": instance[:128],
    }


class EventRecorder:
    """Queue of Events to post; ``run()`` posts them until cancelled."""

    def __init__(
        self, api: KubeApi, *, queue_size: int = 10000, posters: int = 2, remember: int = 10000
    ) -> None:
        self.api = api
        self.posters = posters
        self.instance = socket.gethostname()
        self._queue: asyncio.Queue[tuple[EventIntent, float]] = asyncio.Queue(queue_size)
        self._counts: dict[str, int] = {}  # oldest first; bounded by ``remember``
        self.remember = remember
        self.dropped = 0

    def post(self, intent: EventIntent) -> None:
        """Queue an Event; never blocks (a full queue drops it, with a log line)."""
        try:
            self._queue.put_nowait((intent, time.time()))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("event queue full, dropped %s %s", intent.reason, intent.ref.name)

    async def run(self) -> None:
        await asyncio.gather(*(self._post_forever() for _ in range(self.posters)))

    async def drain(self) -> None:
        """Wait until everything queued so far is posted (or failed)."""
        await self._queue.join()

    async def _post_forever(self) -> None:
        while True:
            intent, when = await self._queue.get()
            try:
                await self._post(intent, when)
            except ApiError as error:
                logger.warning(
                    "could not post event %s on %s: %s", intent.reason, intent.ref.name, error
                )
            except Exception:
                logger.exception("could not post event %s on %s", intent.reason, intent.ref.name)
            finally:
                self._queue.task_done()

    async def _post(self, intent: EventIntent, when: float) -> None:
        name = event_name(intent)
        namespace = intent.ref.namespace or "default"
        path = f"/api/v1/namespaces/{namespace}/events"
        stamp = rfc3339(when)
        count = self._counts.get(name)
        if count is not None:
            try:
                await self._bump(path, name, count + 1, stamp)
                return
            except ApiError as error:
                if error.status != 404:  # expired (Events live an hour): create it again
                    raise
        try:
            await self.api.request(
                "POST", path, body=event_body(intent, name, namespace, stamp, self.instance)
            )
            self._remember(name, 1)
        except ApiError as error:
            if error.status != 409:
                raise
            # Posted by an earlier run of the operator: count on from its count.
            existing = await self.api.request("GET", f"{path}/{name}")
            await self._bump(path, name, int(existing.get("count") or 1) + 1, stamp)

    async def _bump(self, path: str, name: str, count: int, stamp: str) -> None:
        await self.api.request(
            "PATCH",
            f"{path}/{name}",
            body={"count": count, "lastTimestamp": stamp},
            content_type=MERGE_PATCH,
        )
        self._remember(name, count)

    def _remember(self, name: str, count: int) -> None:
        """Keep the counts of recent Events; a forgotten one is found again by its name."""
        self._counts.pop(name, None)
        self._counts[name] = count
        while len(self._counts) > self.remember:
            del self._counts[next(iter(self._counts))]
