"""Following one worker's breaker endpoint: long-poll when it can, plain polling when it cannot.

Every answer is bounded in size and time; anything but a valid document within those bounds is
an ``unknown`` Reading with a reason. Runs on the operator's event loop until cancelled.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

import aiohttp

from ..contract import Reading, parse_document, unknown
from ..model import WatchSpec

__all__ = ("DEFAULT_MAX_BYTES", "EndpointWatcher", "fetch_reading")

DEFAULT_MAX_BYTES = 256 * 1024
_CHUNK = 16 * 1024


async def fetch_reading(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float,
    since: int | None = None,
    wait: float = 0.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Reading:
    """One request: ``GET url`` (or ``?since=&wait=`` as a long-poll), as a Reading.

    ``timeout`` covers connecting and answering; a long-poll may take ``wait`` on top.
    """
    params = {} if since is None else {"since": str(since), "wait": f"{wait:g}"}
    limit = timeout + (wait if since is not None else 0.0)
    body = bytearray()
    try:
        async with asyncio.timeout(limit):
            async with session.get(url, params=params, allow_redirects=False) as response:
                if response.status != 200:
                    return unknown(url, "http_status", f"HTTP {response.status} instead of 200")
                if (response.content_length or 0) > max_bytes:
                    return unknown(
                        url, "oversized", f"oversized answer: more than {max_bytes} bytes"
                    )
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        return unknown(
                            url, "oversized", f"oversized answer: more than {max_bytes} bytes"
                        )
    except TimeoutError:
        return unknown(url, "timeout", f"no complete answer within {limit:g}s")
    except aiohttp.ClientConnectorError as error:
        if error.os_error is not None and error.os_error.errno == errno.ECONNREFUSED:
            return unknown(url, "refused", "connection refused")
        return unknown(url, "unreachable", "cannot connect")
    except aiohttp.ClientPayloadError:
        return unknown(url, "other", "answer cut short")
    except aiohttp.ClientError as error:
        return unknown(url, "other", f"request failed: {type(error).__name__}")
    return parse_document(url, bytes(body))


class EndpointWatcher:
    """Reads one pod's endpoint over and over and hands every Reading to ``on_reading``.

    The first request (and the first after a failure) is a plain GET. Then, in longPoll mode,
    every request asks ``?since=SEQ&wait=S``. A long-poll answered at once without a new
    sequence is an endpoint that does not hold requests (or holds them for less than we
    asked, its own cap): the next request waits until ``poll_interval`` has passed since this
    one began, so such an endpoint is polled at the interval, and every later request probes
    long-poll again, so a held answer (an endpoint with a ``max_wait`` below what we asked)
    is long-polled at the length it holds. Nothing an endpoint answers makes more than one
    request per ``MIN_GAP``. After a failed request it waits ``poll_interval``. Not a task
    itself: the caller runs ``run()`` and stops it by cancelling, which closes the request
    at once.
    """

    MIN_GAP = 0.25  # seconds between two requests at least: 4 a second per pod at most
    HELD = 1.0  # an answer this late (or after half the wait) was held: long-poll works

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: str,
        spec: WatchSpec,
        on_reading: Callable[[Reading], None],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.session = session
        self.url = url
        self.spec = spec
        self.on_reading = on_reading
        self.max_bytes = max_bytes
        # Whether the last round polled: always in poll mode, after an early answer otherwise.
        self.polling = spec.mode != "longPoll"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        since: int | None = None
        while True:
            long_poll = self.spec.mode == "longPoll" and since is not None
            wait = self.spec.long_poll if long_poll else 0.0
            started = loop.time()
            reading = await self._fetch(since if long_poll else None, wait)
            self.on_reading(reading)
            elapsed = loop.time() - started
            if not reading.reachable or reading.sequence is None:
                since = None
                await asyncio.sleep(self.spec.poll_interval)
                continue
            if self.spec.mode == "longPoll":
                early = long_poll and elapsed < min(self.HELD, wait / 2)
                self.polling = early and reading.sequence == since
            gap = self.spec.poll_interval if self.polling else self.MIN_GAP
            since = reading.sequence
            await asyncio.sleep(max(gap - elapsed, 0.0))

    async def _fetch(self, since: int | None, wait: float) -> Reading:
        """One request; whatever goes wrong in it is an unknown Reading, never our end."""
        try:
            return await fetch_reading(
                self.session,
                self.url,
                timeout=self.spec.timeout,
                since=since,
                wait=wait,
                max_bytes=self.max_bytes,
            )
        except Exception as error:  # the watcher never dies on a reply
            return unknown(self.url, "other", f"request failed: {type(error).__name__}")
