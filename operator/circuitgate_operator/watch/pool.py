"""The set of endpoint watchers of one policy: one task per watched pod, started and stopped to
match what the policy watches now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from ..contract import Reading, unknown
from ..model import WatchSpec
from .endpoint import DEFAULT_MAX_BYTES, EndpointWatcher

__all__ = ("Target", "WatcherPool", "new_session")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What one pod's watcher follows; a different Target restarts its watcher."""

    url: str
    spec: WatchSpec


def new_session() -> aiohttp.ClientSession:
    """A session for many endpoints: no overall timeout (each request sets its own), no
    connection cap (long-polls hold one connection per pod), no cookies, no proxy settings."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
    )


class WatcherPool:
    """Runs an EndpointWatcher per key; ``sync`` starts, restarts and stops them at once.
    ``openings``, shared by the pools of one operator, bounds the streams opening at once."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        on_reading: Callable[[str, Reading], None],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        name: str = "",
        openings: asyncio.Semaphore | None = None,
    ) -> None:
        self.session = session
        self.on_reading = on_reading
        self.max_bytes = max_bytes
        self.name = name
        self.openings = openings
        self._tasks: dict[str, tuple[Target, asyncio.Task[None]]] = {}
        # Whether a watcher ended by itself since the last ``sync`` (which starts it again).
        self.ended = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._tasks)

    async def sync(self, targets: Mapping[str, Target]) -> None:
        """Make the running watchers exactly ``targets``; stopped ones are awaited."""
        self.ended = False
        stale = [
            key
            for key, (target, task) in self._tasks.items()
            if targets.get(key) != target or task.done()
        ]
        await self._stop(stale)
        for key, target in targets.items():
            if key not in self._tasks:
                self._tasks[key] = (target, self._start(key, target))

    async def close(self) -> None:
        await self._stop(list(self._tasks))

    def _start(self, key: str, target: Target) -> asyncio.Task[None]:
        watcher = EndpointWatcher(
            session=self.session,
            url=target.url,
            spec=target.spec,
            on_reading=lambda reading: self.on_reading(key, reading),
            max_bytes=self.max_bytes,
            openings=self.openings,
        )
        task = asyncio.create_task(watcher.run(), name=f"circuitgate watcher {self.name} {key}")
        task.add_done_callback(lambda done: self._report(key, target, done))
        return task

    async def _stop(self, keys: list[str]) -> None:
        tasks = [self._tasks.pop(key)[1] for key in keys]
        for task in tasks:
            task.cancel()
        if tasks:
            # wait(), not awaiting each task: our own cancellation must still propagate.
            await asyncio.wait(tasks)

    def _report(self, key: str, target: Target, task: asyncio.Task[None]) -> None:
        """A watcher that ended on an exception leaves the pod unknown, never at its last
        reading (which may say open and reachable); the next ``sync`` starts a new one."""
        current = self._tasks.get(key)
        if current is not None and current[1] is task:  # not stopped by us: to start again
            self.ended = True
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        logger.error("endpoint watcher %s crashed", task.get_name(), exc_info=error)
        self.on_reading(
            key, unknown(target.url, "other", f"watcher failed: {type(error).__name__}")
        )
