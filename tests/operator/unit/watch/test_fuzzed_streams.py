"""A real EndpointWatcher in stream mode against streams no worker would send: hypothesis
writes the status line, the headers and a run of pieces (events with odd documents and odd
fields, keep-alives, comments, raw bytes, an event past the size bound, an event cut short),
and a raw asyncio server on loopback sends them byte for byte, then closes or goes quiet.

Promises checked on every example: no exception escapes the watcher (its task still runs, the
event loop saw no unhandled error); a Reading shows a state only if a ``circuit`` event of a
200 ``text/event-stream`` answer carried a valid document of that state and sequence, so
nothing else reads as closed; the watcher reads no more than its pace allows; memory stays
bounded while a huge event streams in.

``HYPOTHESIS_PROFILE=nightly`` runs many more examples.
"""

from __future__ import annotations

import asyncio
import json
import re
import tracemalloc
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from circuitgate_operator.contract import Reading
from circuitgate_operator.model import WatchSpec
from circuitgate_operator.watch.endpoint import EndpointWatcher
from tests.operator.unit.watch.test_fuzzed_replies import (
    MEMORY_BOUND,
    bodies,
    documents,
    dumps,
    follow_server,
    honest_state,
    status_lines,
)
from tests.profiles import property_settings

MAX_BYTES = 64 * 1024
SPEC = WatchSpec(mode="stream", poll_interval=0.3, timeout=0.3, long_poll=0.4)
HUGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Script:
    """One answer to a stream request: the head, the pieces of its body, how it ends."""

    status: bytes
    content_type: bytes
    chunked: bool
    pieces: tuple[bytes, ...]
    ending: str  # "close" or "quiet"
    events: tuple[tuple[str, bytes], ...]  # (event type, data) of every whole event sent

    def head(self) -> bytes:
        headers = [b"Content-Type: " + self.content_type] if self.content_type else []
        headers.append(b"Transfer-Encoding: chunked" if self.chunked else b"Connection: close")
        return self.status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"

    def honest(self) -> set[tuple[str, int]]:
        """The (state, sequence) pairs a reader may show: those of valid documents in circuit
        events of a 200 event stream."""
        ok = re.fullmatch(rb"HTTP/1\.[01] 200( .*)?", self.status) is not None
        if not ok or not self.content_type.startswith(b"text/event-stream"):
            return set()
        pairs = set()
        for kind, data in self.events:
            state = honest_state(data) if kind == "circuit" else None
            if state is not None:
                pairs.add((state, int(json.loads(data)["sequence"])))
        return pairs


def event(kind: str | None, data: bytes, event_id: bytes) -> bytes:
    """An event whose data lines join back to ``data`` exactly."""
    lines = b"id: " + event_id + b"\n" if event_id else b""
    lines += b"event: " + kind.encode() + b"\n" if kind is not None else b""
    return lines + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    pieces: list[bytes] = []
    events: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["event", "event", "keepalive", "comment", "raw", "huge"]))
        if kind == "event":
            data = draw(documents().map(dumps) | bodies)
            event_type = draw(st.sampled_from(["circuit", "circuit", "message", None, "ping"]))
            event_id = draw(st.sampled_from([b"1", b"", b"x" * 100, b"\xff"]))
            pieces.append(event(event_type, data, event_id))
            events.append((event_type or "message", data))
        elif kind == "keepalive":
            pieces.append(b": keep-alive\n\n")
        elif kind == "comment":
            pieces.append(b":" + draw(st.binary(max_size=50)).replace(b"\n", b"") + b"\n")
        elif kind == "raw":
            pieces.append(draw(st.binary(max_size=200)))
        else:
            pieces.append(b"data: " + b" " * HUGE)  # no end: past any bound
    if draw(st.booleans()):
        pieces.append(b"event: circuit\ndata: " + draw(documents().map(dumps))[:-5])  # cut
    status = draw(st.just(b"HTTP/1.1 200 OK") | status_lines)
    content_type = draw(
        st.sampled_from([b"text/event-stream", b"text/event-stream; charset=utf-8"])
        | st.sampled_from([b"application/json", b"", b"text/event-stream\x00"])
    )
    return Script(
        status=status,
        content_type=content_type,
        chunked=draw(st.booleans()),
        pieces=tuple(pieces),
        ending=draw(st.sampled_from(["close", "quiet"])),
        events=tuple(events),
    )


@dataclass
class StreamServer:
    """Answers every request with the script; counts the connections."""

    script: Script
    connections: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.connections += 1
            writer.write(self.script.head())
            for piece in self.script.pieces:
                for start in range(0, len(piece), 65536):  # a reader that stops stops us
                    block = piece[start : start + 65536]
                    writer.write(
                        b"%x\r\n%s\r\n" % (len(block), block) if self.script.chunked else block
                    )
                    await writer.drain()
            if self.script.ending == "quiet":
                await self.stopped.wait()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()


async def follow(script: Script) -> tuple[list[tuple[float, Reading]], list[str], int]:
    """A watcher following the server until it has come back for a second answer."""
    loop = asyncio.get_running_loop()
    server = StreamServer(script)
    readings: list[tuple[float, Reading]] = []
    errors, peak = await follow_server(
        server,
        SPEC,
        lambda reading: readings.append((loop.time(), reading)),
        lambda: server.connections >= 2,
    )
    return readings, errors, peak


@property_settings(quick=15, nightly=400, suppress=(HealthCheck.data_too_large,))
@given(scripts())
def test_no_stream_crashes_the_watcher_or_reads_as_a_state_it_does_not_say(
    script: Script,
) -> None:
    tracemalloc.start()
    try:
        readings, errors, peak = asyncio.run(follow(script))
    finally:
        tracemalloc.stop()
    assert errors == []
    honest = script.honest()
    for _, reading in readings:
        if reading.reachable:
            assert (reading.state, reading.sequence) in honest, (script, reading)
        else:
            assert reading.state == "unknown" and reading.reason
    known = [at for at, reading in readings if reading.reachable]
    if known:  # BURST at once, then one per MIN_GAP
        allowed = EndpointWatcher.BURST + (known[-1] - known[0]) / EndpointWatcher.MIN_GAP + 1
        assert len(known) <= allowed, (len(known), allowed)
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.1f} MiB while following"
