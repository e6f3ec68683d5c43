"""A real EndpointWatcher against replies no worker would send: hypothesis writes raw HTTP
(status lines, headers, chunked, truncated and huge bodies, nested JSON, odd types and
numbers) and a raw asyncio server on loopback sends it byte for byte.

Promises checked on every example: no exception escapes the watcher (its task still runs, the
event loop saw no unhandled error); a reply reads as a breaker state only if it was HTTP 200
with a complete body that is a valid document of that state (checked with jsonschema here,
not with the operator's parser), so nothing malformed reads as closed; requests are at least
``EndpointWatcher.MIN_GAP`` apart; memory stays bounded while huge bodies stream in.

``HYPOTHESIS_PROFILE=nightly`` runs many more examples.
"""

from __future__ import annotations

import asyncio
import json
import re
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from circuitgate_operator.contract import Reading, load_schema
from circuitgate_operator.model import WatchSpec
from circuitgate_operator.watch.endpoint import EndpointWatcher
from circuitgate_operator.watch.pool import new_session
from tests.profiles import property_settings

MAX_BYTES = 64 * 1024
SPEC = WatchSpec(mode="longPoll", poll_interval=0.3, timeout=0.3, long_poll=0.4)
HUGE = 32 * 1024 * 1024  # streamed, never held: far more than the memory bound below
MEMORY_BOUND = 24 * 1024 * 1024
STATES = ["closed", "open", "half_open", "forced_open", "forced_closed"]
VALIDATOR = Draft202012Validator(load_schema())


@dataclass(frozen=True)
class Reply:
    """One answer, as bytes on the wire, and whether it could honestly read as a state."""

    head: bytes
    body: bytes = b""
    chunked: bool = False  # send body as chunks (with bad chunk sizes when corrupt)
    corrupt_chunks: bool = False
    cut: int | None = None  # close the connection after this many body bytes
    hang: bool = False  # send the head, then nothing
    padding: int = 0  # stream this many spaces before the body
    ok: bool = False  # HTTP 200 and the whole body sent: a reader may see its state
    close: bool = False  # close the connection after it

    def state(self) -> str | None:
        """The state an honest reader may see in this reply, else None."""
        if not self.ok or self.padding + len(self.body) > MAX_BYTES:
            return None
        return honest_state(self.body)


def honest_state(body: bytes) -> str | None:
    """The state a valid document says (its most severe breaker's), else None."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    try:
        if next(iter(VALIDATOR.iter_errors(document)), None) is not None:
            return None
    except RecursionError:
        return None
    severity = {"forced_open": 4, "open": 3, "half_open": 2, "forced_closed": 1, "closed": 0}
    worst = max(document["breakers"], key=lambda b: (severity[b["state"]], b["name"]))
    return str(worst["state"])


# -- what hypothesis writes ------------------------------------------------------------------

odd_numbers: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["5", None, True, [], {}]),
)
timestamps = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2027-01-15T08:00:00Z",
            "2027-01-15T08:00:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "yesterday",
            "2027-13-45T99:99:99Z",
        ]
    ),
    st.text(max_size=30),
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A valid breaker-state document, then up to two fields made odd."""
    breakers: list[dict[str, Any]] = [
        {
            "name": name,
            "state": draw(st.sampled_from(STATES)),
            "consecutive_failures": draw(st.integers(0, 100)),
            "window_calls": draw(st.integers(0, 10)),
            "window_failures": draw(st.integers(0, 10)),
            "trips": draw(st.integers(0, 2**63 - 1)),
            "opened_at": draw(st.sampled_from([None, "2027-01-15T08:00:00Z"])),
            "may_close_at": draw(st.sampled_from([None, "2027-01-15T08:01:00+02:00"])),
            "consumption_paused": draw(st.booleans()),
            "queues": [],
            "paused_queues": [],
        }
        for name in draw(st.lists(st.sampled_from(["default", "gpu", "io"]), min_size=1,
                                  max_size=3, unique=True))
    ]  # fmt: skip
    document: dict[str, Any] = {
        "schema": "circuitgate.io/breaker-state/v1",
        "worker": "celery@w1",
        "sequence": draw(st.integers(0, 2**63 - 1)),
        "generated_at": "2027-01-15T08:00:00Z",
        "breakers": breakers,
    }
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from([document, *breakers]))
        key = draw(st.sampled_from([*target, "extra"]))
        odd = timestamps if key.endswith("_at") else odd_numbers
        target[key] = draw(odd)
    return document


def dumps(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


bodies = st.one_of(
    documents().map(dumps),
    st.binary(max_size=512),
    st.integers(1_000, 60_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1_000, 30_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"", b"null", b"[]", b'"closed"', b"1" * 5000, b"NaN", b"\xff\xfe{"]),
)
status_lines = st.one_of(
    st.just(b"HTTP/1.1 200 OK"),  # half of them
    st.sampled_from(
        [
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 204 No Content",
            b"HTTP/1.1 301 Moved",
            b"HTTP/1.1 500 Oops",
            b"HTTP/1.1 999 What",
            b"HTTP/2 200",
            b"HTTP/1.1 2000 OK",
            b"ICY 200 OK",
            b"HTTP/1.1 200",
            b"",
            b"garbage",
        ]
    ),
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    body = draw(bodies)
    status = draw(status_lines)
    framing = draw(
        st.sampled_from(["length", "chunked"])  # half of them well framed
        | st.sampled_from(
            [
                "length",
                "chunked",
                "close",
                "wrong_length",
                "bad_chunks",
                "cut",
                "hang",
                "huge",
                "huge_padding",
                "odd_headers",
            ]
        )
    )
    headers = [b"Content-Type: application/json"]
    ok_status = re.fullmatch(rb"HTTP/1\.[01] 200( .*)?", status) is not None
    reply: dict[str, Any] = {"body": body}
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        reply["ok"] = ok_status
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        reply.update(chunked=True, ok=ok_status)
    elif framing == "close":
        headers.append(b"Connection: close")
        reply.update(close=True, ok=ok_status)
    elif framing == "wrong_length":
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 1000))))
        reply["cut"] = len(body)
    elif framing == "bad_chunks":
        headers.append(b"Transfer-Encoding: chunked")
        reply.update(chunked=True, corrupt_chunks=True)
    elif framing == "cut":
        headers.append(b"Content-Length: %d" % len(body))
        reply["cut"] = draw(st.integers(0, max(len(body) - 1, 0)))
    elif framing == "hang":
        headers.append(b"Content-Length: %d" % len(body))
        reply["hang"] = True
    elif framing == "huge":
        headers.append(b"Content-Length: %d" % (HUGE + len(body)))
        reply["padding"] = HUGE
    elif framing == "huge_padding":
        headers.append(b"Transfer-Encoding: chunked")
        reply.update(chunked=True, padding=HUGE)
    else:
        headers += draw(
            st.lists(
                st.sampled_from(
                    [
                        b"Content-Length: -5",
                        b"Content-Length: abc",
                        b"Content-Length: 1, 2",
                        b"X-Long: " + b"a" * 20_000,
                        b"Content-Encoding: gzip",
                        b"no colon here",
                        b"Transfer-Encoding: gzip, chunked",
                        b"Content-Length: 99999999999999999999",
                    ]
                ),
                min_size=1,
                max_size=3,
            )
        )
        reply.update(close=True, ok=ok_status)  # whether a reader takes it is up to it
    head = status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    return Reply(head=head, **reply)


# -- the raw server --------------------------------------------------------------------------


@dataclass
class RawServer:
    """Sends the scripted replies, one per request, in order; then repeats the last one."""

    replies: list[Reply]
    arrivals: list[float] = field(default_factory=list)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.arrivals.append(asyncio.get_running_loop().time())
                reply = self.replies[min(len(self.arrivals), len(self.replies)) - 1]
                if not await self.send(reply, writer):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()

    async def send(self, reply: Reply, writer: asyncio.StreamWriter) -> bool:
        """Write one reply; False when the connection must end with it."""
        writer.write(reply.head)
        if reply.hang:
            await self.stopped.wait()
            return False
        if reply.padding:
            block = b" " * 65536
            for _ in range(reply.padding // len(block)):
                writer.write(b"%x\r\n%s\r\n" % (len(block), block) if reply.chunked else block)
                await writer.drain()  # a reader that stopped reading stops us here
        body = reply.body if reply.cut is None else reply.body[: reply.cut]
        if reply.chunked:
            size = len(body) + (7 if reply.corrupt_chunks else 0)
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (size, body) if body else b"0\r\n\r\n")
        else:
            writer.write(body)
        await writer.drain()
        return reply.cut is None and reply.ok and not reply.close


class Served(Protocol):
    """A raw server on loopback: its handlers, and the event that ends those still open."""

    handlers: set[asyncio.Task[None]]
    stopped: asyncio.Event

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...


async def follow_server(
    server: Served,
    spec: WatchSpec,
    on_reading: Callable[[Reading], None],
    done: Callable[[], bool],
) -> tuple[list[str], int]:
    """A real watcher following ``server`` until ``done``: the event loop's unhandled errors,
    and the peak memory traced while following."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, context: errors.append(str(context.get("message"))))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, limit=1 << 20)
    port = listener.sockets[0].getsockname()[1]
    session = new_session()
    watcher = EndpointWatcher(
        session=session,
        url=f"http://127.0.0.1:{port}/circuit",
        spec=spec,
        on_reading=on_reading,
        max_bytes=MAX_BYTES,
    )
    task = asyncio.create_task(watcher.run())
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    try:
        async with asyncio.timeout(30):
            while not done() and not task.done():
                await asyncio.sleep(0.02)
        assert not task.done(), f"the watcher ended: {task.exception()!r}"
    finally:
        peak = tracemalloc.get_traced_memory()[1] - baseline
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await session.close()
        listener.close()
        server.stopped.set()  # the client is gone: every handler ends on its own
        if server.handlers:
            await asyncio.wait(server.handlers, timeout=5)
    return errors, peak


async def follow(replies: list[Reply]) -> tuple[list[Reading], RawServer, list[str], int]:
    """A watcher following the raw server until every reply has been read once."""
    server = RawServer(replies)
    readings: list[Reading] = []
    errors, peak = await follow_server(
        server, SPEC, readings.append, lambda: len(readings) >= len(replies)
    )
    return readings, server, errors, peak


def well_framed(body: bytes) -> Reply:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    return Reply(head=head, body=body, ok=True)


def open_document(**change: Any) -> bytes:
    breaker = {
        "name": "default", "state": "open", "consecutive_failures": 5, "window_calls": 5,
        "window_failures": 5, "trips": 1, "opened_at": "2027-01-15T08:00:00Z",
        "may_close_at": "2027-01-15T08:01:00Z", "consumption_paused": True, "queues": [],
        "paused_queues": [],
    }  # fmt: skip
    breaker.update(change.pop("breaker", {}))
    document = {
        "schema": "circuitgate.io/breaker-state/v1",
        "worker": "celery@w1",
        "sequence": 3,
        "generated_at": "2027-01-15T08:00:00Z",
        "breakers": [breaker],
    }
    return dumps({**document, **change})


# Found by hand on main before the fixes (issue 16, item 8); kept as plain examples.
@example([well_framed(open_document()), well_framed(b"[" * 20_000 + b"]" * 20_000)])
@example([well_framed(open_document(breaker={"opened_at": "0001-01-01T00:00:00+01:00"}))])
@example([well_framed(open_document(sequence=2**63))])
@property_settings(quick=20, nightly=400, suppress=(HealthCheck.data_too_large,))
@given(st.lists(replies(), min_size=1, max_size=3))
def test_no_reply_crashes_the_watcher_or_reads_as_a_state_it_does_not_say(
    script: list[Reply],
) -> None:
    tracemalloc.start()
    try:
        readings, server, errors, peak = asyncio.run(follow(script))
    finally:
        tracemalloc.stop()
    assert errors == []
    for reply, reading in zip(script, readings, strict=False):
        honest = reply.state()
        if honest is None:
            assert reading.state == "unknown" and not reading.reachable, (reply, reading)
            assert reading.reason
        else:
            assert reading.state in (honest, "unknown"), (reply, reading)
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
    assert all(gap >= EndpointWatcher.MIN_GAP * 0.9 for gap in gaps), gaps
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.1f} MiB while following"
