"""The breaker endpoint, served for real on loopback, with a real shared breaker behind it."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuitgate.breaker import SharedCircuitBreaker
from circuitgate.breaker_set import BreakerSet
from circuitgate.consumer_pulse import ConsumerPulse
from circuitgate.endpoint import (
    OVER_BOUND_RESERVE,
    STREAM_MIN_GAP,
    BadQuery,
    BreakerEndpoint,
    CircuitQuery,
    StreamQuery,
    parse_circuit_query,
    parse_stream_query,
)
from circuitgate.endpoint_step import serve_breakers
from circuitgate.settings import Settings
from circuitgate.shared_state import State
from circuitgate_devkit.waiting import eventually


@pytest.fixture
def breakers() -> BreakerSet:
    return BreakerSet(Settings(fail_max=1, reset_timeout=30))


@pytest.fixture
def breaker(breakers: BreakerSet) -> SharedCircuitBreaker:
    return breakers.default


@pytest.fixture
def endpoint(breakers: BreakerSet) -> Iterator[BreakerEndpoint]:
    server = serve_breakers(
        breakers,
        "w@lab",
        ["celery"],
        host="127.0.0.1",
        port=0,
        max_connections=8,
        max_wait=5,
    )
    server.start()
    yield server
    server.stop()


def get(
    endpoint: BreakerEndpoint, path: str, timeout: float = 10, *, wait_for_a_slot: bool = True
) -> tuple[int, bytes]:
    """``GET path``: status and body. The bound's refusal (503, ``Retry-After``, no body) is
    asked again while ``wait_for_a_slot``, as a client honouring it would: a handler thread
    frees its slot only once it has seen our last connection close, which a loaded machine
    delays past our next request (one of two slots: a JSON error in a full run)."""
    host, port = endpoint.address
    deadline = time.monotonic() + timeout
    while True:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            status, body = response.status, response.read()
            refused = status == 503 and not body and response.getheader("Retry-After")
        finally:
            connection.close()
        if not (wait_for_a_slot and refused) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.01)


def raw(endpoint: BreakerEndpoint, request: bytes) -> bytes:
    with socket.create_connection(endpoint.address, timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(4096)


def test_circuit_serves_the_document(endpoint: BreakerEndpoint) -> None:
    status, body = get(endpoint, "/circuit")
    assert status == 200
    document = json.loads(body)
    assert document["worker"] == "w@lab"
    assert document["breakers"][0]["state"] == "closed"


def test_health_never_depends_on_the_breaker_and_readiness_does(
    endpoint: BreakerEndpoint, breaker: SharedCircuitBreaker
) -> None:
    assert get(endpoint, "/readyz")[0] == 200
    breaker.record_failure("t", RuntimeError())
    assert get(endpoint, "/healthz") == (200, b"ok\n")
    assert get(endpoint, "/readyz")[0] == 503
    breaker.half_open()
    breaker.admit("trial")
    assert get(endpoint, "/readyz")[0] == 200  # half-open: ready for its trial
    breaker.force(State.FORCED_OPEN)
    assert get(endpoint, "/readyz")[0] == 503
    assert get(endpoint, "/healthz")[0] == 200


def test_a_long_poll_answers_as_soon_as_the_sequence_moves(
    endpoint: BreakerEndpoint, breaker: SharedCircuitBreaker
) -> None:
    since = json.loads(get(endpoint, "/circuit")[1])["sequence"]
    threading.Timer(0.3, lambda: breaker.record_failure("t", RuntimeError())).start()
    started = time.monotonic()
    status, body = get(endpoint, f"/circuit?since={since}&wait=5")
    elapsed = time.monotonic() - started
    assert status == 200
    assert json.loads(body)["breakers"][0]["state"] == "open"
    assert 0.25 < elapsed < 4  # woke on the change, not at the timeout


def test_a_long_poll_with_no_change_answers_at_the_timeout(endpoint: BreakerEndpoint) -> None:
    since = json.loads(get(endpoint, "/circuit")[1])["sequence"]
    status, body = get(endpoint, f"/circuit?since={since}&wait=0.3")
    assert status == 200
    assert json.loads(body)["sequence"] == since


class Stream:
    """A client of ``/circuit/stream``: each event as ``(arrived, id, document)``, or
    ``(arrived, None, None)`` for a keep-alive comment; ``None`` once the stream ends."""

    def __init__(self, endpoint: BreakerEndpoint, query: str = "") -> None:
        host, port = endpoint.address
        self.connection = http.client.HTTPConnection(host, port, timeout=10)
        self.connection.request("GET", f"/circuit/stream{query}")
        self.response = self.connection.getresponse()

    def next(self) -> tuple[float, int | None, dict[str, object] | None] | None:
        lines: list[bytes] = []
        while True:
            line = self.response.readline()
            if not line:
                return None
            if line == b"\n":
                break
            lines.append(line.rstrip(b"\n"))
        arrived = time.monotonic()
        if all(line.startswith(b":") for line in lines):
            return arrived, None, None
        fields = dict(line.split(b": ", 1) for line in lines)
        assert fields[b"event"] == b"circuit"
        return arrived, int(fields[b"id"]), json.loads(fields[b"data"])

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def stream(endpoint: BreakerEndpoint) -> Iterator[Stream]:
    client = Stream(endpoint, "?keepalive=1")
    yield client
    client.close()


def test_a_stream_sends_the_document_at_once_then_each_change(
    endpoint: BreakerEndpoint, breaker: SharedCircuitBreaker, stream: Stream
) -> None:
    assert stream.response.status == 200
    assert stream.response.getheader("Content-Type") == "text/event-stream"
    first = stream.next()
    assert first is not None and first[2] is not None
    assert first[1] == first[2]["sequence"] == json.loads(get(endpoint, "/circuit")[1])["sequence"]
    tripped = time.monotonic()
    breaker.record_failure("t", RuntimeError())
    event = stream.next()
    assert event is not None and event[2] is not None
    assert event[2]["breakers"][0]["state"] == "open"  # type: ignore[index]
    assert event[1] is not None and event[1] > first[1]
    assert event[0] - tripped < 2  # woke on the change, not at a keep-alive


def test_a_quiet_stream_sends_keep_alives(stream: Stream) -> None:
    assert stream.next() is not None  # the document
    for _ in range(2):
        quiet = stream.next()
        assert quiet is not None and quiet[1] is None


def test_a_stream_since_the_current_sequence_starts_with_the_next_change(
    endpoint: BreakerEndpoint, breaker: SharedCircuitBreaker
) -> None:
    since = json.loads(get(endpoint, "/circuit")[1])["sequence"]
    client = Stream(endpoint, f"?since={since}&keepalive=1")
    try:
        quiet = client.next()
        assert quiet is not None and quiet[1] is None  # nothing new: a keep-alive first
        breaker.record_failure("t", RuntimeError())
        event = client.next()
        assert event is not None and event[1] is not None and event[1] > since
    finally:
        client.close()


def test_a_stream_paces_counter_changes_but_never_a_state_change(
    endpoint: BreakerEndpoint,
) -> None:
    """A degraded worker changes its counters with every task: the stream sends them at most
    every STREAM_MIN_GAP seconds, the last value included; a trip goes out at once."""
    breakers = BreakerSet(Settings(fail_max=60, reset_timeout=30))
    server = serve_breakers(breakers, "w@lab", ["celery"], host="127.0.0.1", port=0, max_wait=5)
    server.start()
    client = Stream(server, "?keepalive=5")
    try:
        assert client.next() is not None
        began = time.monotonic()
        for _ in range(58):
            breakers.default.record_failure("t", RuntimeError())
            time.sleep(0.005)
        events = []
        while not events or events[-1][2]["breakers"][0]["consecutive_failures"] < 58:
            event = client.next()
            assert event is not None and event[2] is not None
            events.append(event)
        spent = events[-1][0] - began
        assert len(events) <= spent / STREAM_MIN_GAP + 2
        assert len(events) >= 2  # paced, not held back to the end
        breakers.default.record_failure("t", RuntimeError())  # 59: counters only
        breakers.default.record_failure("t", RuntimeError())  # 60: open
        tripped = time.monotonic()
        while True:
            event = client.next()
            assert event is not None and event[2] is not None
            if event[2]["breakers"][0]["state"] == "open":
                break
        assert event[0] - tripped < STREAM_MIN_GAP
    finally:
        client.close()
        server.stop()


def test_a_stream_ends_when_the_endpoint_stops(breakers: BreakerSet) -> None:
    server = serve_breakers(breakers, "w@lab", ["celery"], host="127.0.0.1", port=0, max_wait=5)
    server.start()
    client = Stream(server, "?keepalive=5")
    try:
        assert client.next() is not None
        server.stop()
        assert client.next() is None
    finally:
        client.close()


@pytest.mark.parametrize(
    "path",
    ["/circuit?since=-1", "/circuit?wait=3", "/circuit?since=1&wait=x", "/circuit?foo=1",
     "/circuit?since=1&since=2", "/healthz?x=1", "/circuit/stream?wait=1",
     "/circuit/stream?keepalive=-1", "/circuit/stream?since=x"],
)  # fmt: skip
def test_bad_queries_get_400(endpoint: BreakerEndpoint, path: str) -> None:
    assert get(endpoint, path)[0] == 400


def test_unknown_paths_get_404_and_garbage_gets_400(endpoint: BreakerEndpoint) -> None:
    assert get(endpoint, "/nope")[0] == 404
    assert raw(endpoint, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(endpoint, b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
    assert raw(endpoint, b"POST /circuit HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").startswith(
        b"HTTP/1.1 501"
    )
    assert get(endpoint, "/healthz")[0] == 200  # still serving


def hold_every_slot(endpoint: BreakerEndpoint, stack: contextlib.ExitStack, head: bytes) -> None:
    """Open connections that send ``head`` and then nothing, until no slot is left."""

    def full() -> bool:
        slow = stack.enter_context(socket.create_connection(endpoint.address, timeout=5))
        slow.sendall(head)
        return get(endpoint, "/circuit", wait_for_a_slot=False)[0] == 503

    eventually(full, timeout=10, interval=0.05, what="every slot held")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pulse(clock: Clock) -> ConsumerPulse:
    return ConsumerPulse(stall_seconds=10, liveness_seconds=30, now=clock)


@pytest.fixture
def watched(breakers: BreakerSet, pulse: ConsumerPulse) -> Iterator[BreakerEndpoint]:
    server = serve_breakers(
        breakers, "w@lab", ["celery"], pulse, host="127.0.0.1", port=0, max_connections=2
    )
    server.start()
    yield server
    server.stop()


def test_readiness_and_liveness_follow_the_consumer(
    watched: BreakerEndpoint, pulse: ConsumerPulse, clock: Clock, breaker: SharedCircuitBreaker
) -> None:
    def consumer() -> dict[str, object]:
        status: dict[str, object] = json.loads(get(watched, "/circuit")[1])["consumer"]
        return status

    assert get(watched, "/readyz") == (503, b"consumer_starting\n")
    pulse.connected()
    assert get(watched, "/readyz") == (200, b"ready\n")
    assert consumer()["status"] == "consuming"
    breaker.record_failure("t", RuntimeError())
    assert (get(watched, "/readyz"), consumer()["status"]) == ((503, b"circuit open\n"), "paused")
    clock.now += 11  # no tick: stalled wins over the open circuit, still live
    assert get(watched, "/readyz") == (503, b"consumer_stalled\n")
    assert get(watched, "/healthz") == (200, b"ok\n")
    clock.now += 20
    assert get(watched, "/healthz") == (503, b"event loop stuck\n")
    pulse.tick()
    assert get(watched, "/healthz") == (200, b"ok\n")
    pulse.asked("BRPOP")
    clock.now += 11
    assert get(watched, "/readyz") == (503, b"consumer_stalled\n")
    assert consumer()["unanswered_poll_seconds"] == 11
    pulse.disconnected(stopping=False)
    assert get(watched, "/readyz") == (503, b"broker_disconnected\n")
    clock.now += 1000
    assert get(watched, "/healthz")[0] == 200  # reconnecting is not a stuck loop
    pulse.disconnected(stopping=True)
    assert get(watched, "/readyz") == (503, b"consumer_stopping\n")


def test_the_sequence_moves_when_the_consumer_stalls_and_recovers(
    watched: BreakerEndpoint, pulse: ConsumerPulse, clock: Clock
) -> None:
    pulse.connected()
    before = json.loads(get(watched, "/circuit")[1])["sequence"]
    clock.now += 11
    stalled = json.loads(get(watched, "/circuit")[1])
    assert (stalled["sequence"], stalled["consumer"]["status"]) == (before + 1, "stalled")
    pulse.tick()
    assert json.loads(get(watched, "/circuit")[1])["sequence"] == before + 2


def test_healthz_past_the_bound_says_when_the_loop_is_stuck(
    watched: BreakerEndpoint, pulse: ConsumerPulse, clock: Clock
) -> None:
    pulse.connected()
    clock.now += 31
    since = json.loads(get(watched, "/circuit")[1])["sequence"]
    with contextlib.ExitStack() as stack:
        hold_every_slot(
            watched, stack, f"GET /circuit?since={since}&wait=5 HTTP/1.1\r\n\r\n".encode()
        )
        assert get(watched, "/healthz")[0] == 503
        pulse.tick()
        assert get(watched, "/healthz")[0] == 200


def test_connections_past_the_bound_are_refused_at_once_but_healthz_answers(
    endpoint: BreakerEndpoint,
) -> None:
    since = json.loads(get(endpoint, "/circuit")[1])["sequence"]
    with contextlib.ExitStack() as stack:
        hold_every_slot(
            endpoint, stack, f"GET /circuit?since={since}&wait=5 HTTP/1.1\r\n\r\n".encode()
        )
        assert get(endpoint, "/healthz")[0] == 200  # liveness never waits for a slot
    eventually(lambda: get(endpoint, "/circuit")[0] == 200, timeout=10, what="slots free")


def test_healthz_answers_while_slow_clients_hold_every_slot(endpoint: BreakerEndpoint) -> None:
    with contextlib.ExitStack() as stack:
        hold_every_slot(endpoint, stack, b"GET /circuit HTTP/1.1\r\n")  # half a head
        assert get(endpoint, "/healthz")[0] == 200
        # Slow clients past the bound too: each is dropped after a short read timeout.
        for _ in range(OVER_BOUND_RESERVE):
            slow = stack.enter_context(socket.create_connection(endpoint.address, timeout=5))
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        eventually(lambda: get(endpoint, "/healthz")[0] == 200, timeout=10, what="healthz")


def test_healthz_answers_while_trickling_clients_hold_the_slots_and_the_reserve(
    endpoint: BreakerEndpoint,
) -> None:
    """Clients that send a byte now and then never trip a per-read timeout: past the bound
    each has one second for its whole head, and a probe that finds the reserve full is
    answered from what it has already sent."""
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        hold_every_slot(endpoint, stack, b"GET /circuit HTTP/1.1\r\n")
        tricklers = [
            stack.enter_context(socket.create_connection(endpoint.address, timeout=5))
            for _ in range(OVER_BOUND_RESERVE)
        ]

        def trickle() -> None:
            while not stop.is_set():
                for trickler in tricklers:
                    with contextlib.suppress(OSError):
                        trickler.send(b"x")
                stop.wait(0.3)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        stack.callback(thread.join)
        stack.callback(stop.set)
        for _ in range(5):
            assert get(endpoint, "/healthz", timeout=3)[0] == 200


def test_metrics_expose_state_trips_and_handed_back_messages(
    endpoint: BreakerEndpoint, breaker: SharedCircuitBreaker
) -> None:
    breaker.record_failure("t", RuntimeError())
    breaker.admit("refused")
    status, body = get(endpoint, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'circuitgate_breaker_state{breaker="default",state="open"} 1.0' in text
    assert 'circuitgate_trips_total{breaker="default"} 1.0' in text
    assert 'circuitgate_handed_back_messages_total{breaker="default",reason="open"} 1.0' in text
    assert "circuitgate_paused_seconds_total" in text


@given(since=st.integers(0, 10**18), wait=st.floats(0, 1e6, allow_nan=False))
def test_valid_queries_parse_and_wait_is_capped(since: int, wait: float) -> None:
    query = parse_circuit_query(f"since={since}&wait={wait!r}", max_wait=60)
    assert query == CircuitQuery(since=since, wait=min(wait, 60))


@given(st.text(max_size=200))
def test_any_query_string_parses_or_raises_bad_query(text: str) -> None:
    try:
        query = parse_circuit_query(text, max_wait=60)
    except BadQuery:
        return
    assert query.since is None or query.since >= 0
    assert 0 <= query.wait <= 60


@given(
    since=st.integers(0, 10**18),
    keepalive=st.floats(0, 1e6, allow_nan=False),
    max_wait=st.sampled_from([0.001, 0.5, 60.0]),
)
def test_valid_stream_queries_parse_and_keepalive_is_bounded(
    since: int, keepalive: float, max_wait: float
) -> None:
    """At most max_wait, and a second at least, whatever max_wait says."""
    query = parse_stream_query(f"since={since}&keepalive={keepalive!r}", max_wait=max_wait)
    assert query == StreamQuery(since=since, keepalive=max(min(keepalive, max_wait), 1.0))
    assert query.keepalive >= 1.0


@given(st.text(max_size=200))
def test_any_stream_query_parses_or_raises_bad_query(text: str) -> None:
    try:
        query = parse_stream_query(text, max_wait=60)
    except BadQuery:
        return
    assert query.since is None or query.since >= 0
    assert 1 <= query.keepalive <= 60
