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
    it asks ``?since=SEQ&wait=S``. An endpoint that answers a long-poll at once without a new
    sequence does not support it, and is polled every ``poll_interval`` from then on. After a
    failed request it waits ``poll_interval`` before trying again. Not a task itself: the
    caller runs ``run()`` and stops it by cancelling, which closes the request at once.
    """

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
        self.polling = spec.mode != "longPoll"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        since: int | None = None
        while True:
            long_poll = not self.polling and since is not None
            wait = self.spec.long_poll if long_poll else 0.0
            started = loop.time()
            reading = await fetch_reading(
                self.session,
                self.url,
                timeout=self.spec.timeout,
                since=since if long_poll else None,
                wait=wait,
                max_bytes=self.max_bytes,
            )
            self.on_reading(reading)
            elapsed = loop.time() - started
            if not reading.reachable or reading.sequence is None:
                since = None
                await asyncio.sleep(self.spec.poll_interval)
                continue
            if long_poll and since is not None:
                unchanged = reading.sequence <= since
                if unchanged and elapsed < wait / 2:
                    self.polling = True  # answered at once with nothing new: no long-poll here
            since = reading.sequence
            if self.polling:
                await asyncio.sleep(max(self.spec.poll_interval - elapsed, 0.0))
