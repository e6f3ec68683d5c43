"""Following one worker's breaker endpoint: its stream when it serves one, long-poll when it
does not, plain polling when it cannot hold a request either.

Every answer is bounded in size and time; anything but a valid document within those bounds is
an ``unknown`` Reading with a reason. Runs on the operator's event loop until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager

import aiohttp

from ..contract import Reading, parse_document, unknown
from ..model import WatchSpec
from .sse import Event, EventParser, EventTooLarge

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
    except aiohttp.ClientError as error:
        return _failed(url, error)
    return parse_document(url, bytes(body))


def _failed(url: str, error: aiohttp.ClientError) -> Reading:
    if isinstance(error, aiohttp.ClientConnectorError):
        if error.os_error is not None and error.os_error.errno == errno.ECONNREFUSED:
            return unknown(url, "refused", "connection refused")
        return unknown(url, "unreachable", "cannot connect")
    if isinstance(error, aiohttp.ClientPayloadError):
        return unknown(url, "other", "answer cut short")
    return unknown(url, "other", f"request failed: {type(error).__name__}")


# What an endpoint without a stream answers for one: an older worker's 400 ("no query string
# here") or 404, a server's 405 or 501 (or a 200 that is no event stream).
_NO_STREAM = frozenset({400, 404, 405, 501})


class _Pace:
    """A token bucket: ``burst`` reads at once, one per ``gap`` seconds on average."""

    def __init__(self, gap: float, burst: int, now: float) -> None:
        self.gap, self.burst = gap, burst
        self.tokens, self.at = float(burst), now

    def spend(self, now: float) -> float:
        """Take a token; the seconds to wait before the next read."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.gap) - 1
        self.at = now
        return max(-self.tokens * self.gap, 0.0)


class EndpointWatcher:
    """Reads one pod's endpoint over and over and hands every Reading to ``on_reading``.

    In stream mode (the default) it opens ``<url>/stream`` first (and again after any failed
    read): one connection, one Reading per event, a keep-alive comment every ``long_poll``
    seconds. A stream whose first event takes longer than ``timeout``, or that completes no
    event or keep-alive for ``long_poll + timeout`` seconds after it (bytes trickling in do
    not count), is unknown. ``openings`` bounds the watchers reading for the first time at
    once (connecting until the first event); that timeout counts from this one's turn, so
    streams waiting behind a loaded server's queue do not time out on each other. A stream
    opened again (after one that broke, 1 to 1.5 ``poll_interval`` later) takes no turn.
    The socket is read ``BURST`` times at once and once per ``MIN_GAP`` after that; what
    arrives meanwhile waits in the socket and only its latest event is read. An endpoint that
    serves no stream is followed by long-poll, as in longPoll mode.

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
    BURST = 4  # stream reads at once before the pace is MIN_GAP
    HELD = 1.0  # an answer this late (or after half the wait) was held: long-poll works

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: str,
        spec: WatchSpec,
        on_reading: Callable[[Reading], None],
        max_bytes: int = DEFAULT_MAX_BYTES,
        openings: AbstractAsyncContextManager[object] | None = None,
    ) -> None:
        self.session = session
        self.url = url
        self.spec = spec
        self.on_reading = on_reading
        self.max_bytes = max_bytes
        self.openings = openings if openings is not None else contextlib.nullcontext()
        self.heard = False  # any Reading handed over yet
        # Whether the last round polled: always in poll mode, after an early answer otherwise.
        self.polling = spec.mode == "poll"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        since: int | None = None
        while True:
            if self.spec.mode == "stream" and since is None:
                served = False
                # Only a first read waits for a turn: endpoints that never answer, holding
                # the turns, must not keep a worker that restarted from being read again.
                turn = self.openings if not self.heard else contextlib.nullcontext()
                async with contextlib.aclosing(self._stream()) as stream:
                    async with turn:
                        reading = await anext(stream, None)
                    while reading is not None:
                        served = self.heard = True
                        self.on_reading(reading)
                        reading = await anext(stream, None)
                if served:  # it ended on an unknown Reading
                    # Jittered: streams that all broke at once (our network blipped) must
                    # not all open again at once, outside the turns, and time out on each other.
                    await asyncio.sleep(self.spec.poll_interval * random.uniform(1.0, 1.5))
                    continue
            long_poll = self.spec.mode != "poll" and since is not None
            wait = self.spec.long_poll if long_poll else 0.0
            started = loop.time()
            reading = await self._fetch(since if long_poll else None, wait)
            self.heard = True
            self.on_reading(reading)
            elapsed = loop.time() - started
            if not reading.reachable or reading.sequence is None:
                since = None
                await asyncio.sleep(self.spec.poll_interval)
                continue
            if self.spec.mode != "poll":
                early = long_poll and elapsed < min(self.HELD, wait / 2)
                self.polling = early and reading.sequence == since
            gap = self.spec.poll_interval if self.polling else self.MIN_GAP
            since = reading.sequence
            await asyncio.sleep(max(gap - elapsed, 0.0))

    async def _stream(self) -> AsyncGenerator[Reading, None]:
        """The stream's Readings as they come, the last one unknown; none at all when the
        endpoint serves no stream. Whatever goes wrong in it is a Reading, never our end."""
        try:
            async for reading in self._follow_stream():
                yield reading
        except TimeoutError:
            yield unknown(self.url, "timeout", f"no answer within {self.spec.timeout:g}s")
        except EventTooLarge as error:
            yield unknown(self.url, "oversized", f"oversized event: {error}")
        except aiohttp.ClientError as error:
            yield _failed(self.url, error)
        except Exception as error:  # the watcher never dies on a reply
            yield unknown(self.url, "other", f"stream failed: {type(error).__name__}")

    async def _follow_stream(self) -> AsyncGenerator[Reading, None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.timeout  # connected, answered, the first event
        quiet = self.spec.long_poll + self.spec.timeout
        params = {"keepalive": f"{self.spec.long_poll:g}"}
        async with asyncio.timeout_at(deadline):
            response = await self.session.get(
                f"{self.url}/stream", params=params, allow_redirects=False
            )
        async with response:
            served = response.status == 200 and response.content_type == "text/event-stream"
            if response.status in _NO_STREAM or (response.status == 200 and not served):
                return
            if not served:
                yield unknown(self.url, "http_status", f"HTTP {response.status} instead of 200")
                return
            parser = EventParser(self.max_bytes)
            pace = _Pace(self.MIN_GAP, self.BURST, loop.time())
            heard = False
            while True:
                chunk: bytes | None = None
                # Not across the yield: a deadline armed there would cancel our consumer.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        chunk = await response.content.readany()
                if chunk == b"":
                    break
                events: list[Event] = []
                if chunk is not None:
                    blocks = parser.blocks
                    events = [e for e in parser.feed(chunk) if e.event == "circuit"]
                    heard = heard or bool(events)
                    if heard and parser.blocks > blocks:  # a whole event or keep-alive
                        deadline = loop.time() + quiet
                # Checked after a read too: bytes that never stop (held back by the pace)
                # are always waiting, and such a read never waits out its deadline.
                if chunk is None or loop.time() >= deadline:
                    wait = quiet if heard else self.spec.timeout
                    what = "event or keep-alive" if heard else "event"
                    yield unknown(self.url, "timeout", f"no {what} within {wait:g}s")
                    return
                if events:
                    reading = parse_document(self.url, events[-1].data)
                    yield reading
                    if not reading.reachable:
                        return
                # Whatever came: a flood of anything waits in the socket, and is read as one.
                await asyncio.sleep(pace.spend(loop.time()))
        yield unknown(self.url, "other", "the stream ended")

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
