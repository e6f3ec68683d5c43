"""The worker's local HTTP endpoint: breaker state, health, readiness and metrics.

Served from the worker's main process only, on threads of its own, so a saturated pool
or a busy consumer never delays an answer, and an answer never delays the consumer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .contract import WorkerDocument

__all__ = (
    "BadQuery",
    "BreakerEndpoint",
    "CircuitQuery",
    "StreamQuery",
    "parse_circuit_query",
    "parse_stream_query",
    "unready_reason",
)

logger = logging.getLogger(__name__)

MAX_URL = 2048


class BadQuery(ValueError):
    """A ``/circuit`` query string that cannot be honoured; the message says why."""


@dataclass(frozen=True)
class CircuitQuery:
    """``GET /circuit?since=SEQ&wait=SECONDS``: answer once the sequence passes ``since``."""

    since: int | None = None
    wait: float = 0.0


@dataclass(frozen=True)
class StreamQuery:
    """``GET /circuit/stream?since=SEQ&keepalive=SECONDS``: an event per change past ``since``
    (the current document at once without it), a keep-alive comment when quiet that long."""

    since: int | None = None
    keepalive: float = 15.0


def parse_circuit_query(query: str, *, max_wait: float) -> CircuitQuery:
    """Parse and check a long-poll's query; ``wait`` is capped at ``max_wait``."""
    params = _params(query, ("since", "wait"))
    since = _since(params)
    wait = _seconds(params, "wait", 0.0)
    if "wait" in params and since is None:
        raise BadQuery("wait needs since")
    return CircuitQuery(since=since, wait=min(wait, max_wait))


def parse_stream_query(query: str, *, max_wait: float) -> StreamQuery:
    """Parse and check a stream's query; ``keepalive`` is capped at ``max_wait``, and at least
    a second whatever ``max_wait`` says."""
    params = _params(query, ("since", "keepalive"))
    keepalive = _seconds(params, "keepalive", StreamQuery.keepalive)
    return StreamQuery(since=_since(params), keepalive=max(min(keepalive, max_wait), 1.0))


def _params(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise BadQuery("malformed query string") from None
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed)}")
    if any(len(values) > 1 for values in params.values()):
        raise BadQuery("each parameter may be given once")
    return {name: values[0] for name, values in params.items()}


def _since(params: dict[str, str]) -> int | None:
    if "since" not in params:
        return None
    text = params["since"]
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise BadQuery("since must be a non-negative integer")
    return int(text)


def _seconds(params: dict[str, str], name: str, default: float) -> float:
    if name not in params:
        return default
    try:
        value = float(params[name])
    except ValueError:
        raise BadQuery(f"{name} must be a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise BadQuery(f"{name} must be a non-negative number of seconds")
    return value


class _ChangeNotifier:
    """Wakes long-pollers when the sequence moves.

    The breakers change in pool children, so the main process learns of a change by
    reading the shared page: every ``interval`` seconds, and only while someone waits.
    """

    def __init__(self, sequence: Callable[[], int], interval: float) -> None:
        self._sequence = sequence
        self._interval = interval
        self._changed = threading.Condition()
        self._waiters = 0
        self._someone_waits = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="circuitgate-notifier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def pause(self, seconds: float) -> None:
        """Sleep, but not past the endpoint's stop."""
        self._stopped.wait(seconds)

    def stop(self) -> None:
        self._stopped.set()
        self._someone_waits.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(5)

    def wait_past(self, since: int, timeout: float) -> None:
        """Return when the sequence exceeds ``since``, the timeout passes, or we stop."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._waiters += 1
            self._someone_waits.set()
            try:
                while self._sequence() <= since and not self._stopped.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._changed.wait(remaining)
            finally:
                self._waiters -= 1
                if not self._waiters:
                    self._someone_waits.clear()

    def _run(self) -> None:
        last = self._sequence()
        while not self._stopped.is_set():
            self._someone_waits.wait()
            current = self._sequence()
            if current != last:
                last = current
                with self._changed:
                    self._changed.notify_all()
            time.sleep(self._interval)


STREAM_MIN_GAP = 0.25
"""Seconds between two stream events that change no breaker's state: a state change goes out
at once, counters at most this often (a degraded worker changes them with every task)."""
_KEEPALIVE = b": keep-alive\n\n"
_RECHECK = 0.01  # seconds between two looks at the states while counter changes are held


def _event(document: WorkerDocument) -> bytes:
    """One Server-Sent Event: the whole document on one line, its sequence as the event id."""
    return b"id: %d\nevent: circuit\ndata: %s\n\n" % (document.sequence, document.dumps())


_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n"
)
_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
_STUCK = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 17\r\n"
    b"Connection: close\r\n\r\nevent loop stuck\n"
)
OVER_BOUND_RESERVE = 8
"""Connections past the bound read at once, each only for ``/healthz``."""
OVER_BOUND_TIMEOUT = 1.0
"""Seconds a connection past the bound has to send its request head."""
_MAX_HEAD = 16 * 1024
FIRST_BYTES_WAIT = 0.05
"""Seconds the accepting thread waits for a connection's first packet when even the reserve
is full: bounded, so a flood of connections slows accepting, never stops it."""


def _answer_past_the_bound(request: socket.socket, live: Callable[[], bool]) -> None:
    """Past the bound only ``/healthz`` is served: liveness must not depend on slow clients.

    Reads the request head within one deadline for all of it (a client sending a byte now and
    then never trips a per-read timeout), so that closing does not reset a connection whose
    answer is still on its way; then answers and closes.
    """
    deadline = time.monotonic() + OVER_BOUND_TIMEOUT
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < _MAX_HEAD:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        request.settimeout(remaining)
        chunk = request.recv(4096)
        if not chunk:
            break
        head += chunk
    request.sendall(_healthz(live) if _is_healthz(head) else _REFUSED)


def _answer_from_what_arrived(request: socket.socket, live: Callable[[], bool]) -> None:
    """Over the reserve too: answer at once from what the client sends right away (a probe
    sends its whole request as it connects), in the accepting thread. The listening socket
    defers accepting until a connection has sent data (Linux), so this rarely waits; where it
    cannot, it waits `FIRST_BYTES_WAIT` at most."""
    request.settimeout(FIRST_BYTES_WAIT)
    try:
        head = request.recv(_MAX_HEAD)  # all that arrived: nothing left to reset the close
    except OSError:  # TimeoutError among them
        head = b""
    request.sendall(_healthz(live) if _is_healthz(head) else _REFUSED)


def _healthz(live: Callable[[], bool]) -> bytes:
    return _ALIVE if live() else _STUCK


def _is_healthz(head: bytes) -> bool:
    return head.split(b"\r\n", 1)[0].split()[:2] == [b"GET", b"/healthz"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoint: BreakerEndpoint) -> None:
        self.endpoint = endpoint
        self.slots = threading.BoundedSemaphore(endpoint.max_connections)
        self.reserve = threading.BoundedSemaphore(OVER_BOUND_RESERVE)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Accept a connection only once it has sent something (for up to 1 s): a flood of
        # silent connections never reaches the accepting thread, and a probe arrives whole.
        defer = getattr(socket, "TCP_DEFER_ACCEPT", None)
        if defer is not None:
            self.socket.setsockopt(socket.IPPROTO_TCP, defer, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.slots.acquire(blocking=False):
            super().process_request(request, client_address)
        elif self.reserve.acquire(blocking=False):
            threading.Thread(
                target=self._serve_past_the_bound, args=(request,), daemon=True
            ).start()
        else:  # over the reserve too: answer at once instead of queueing a thread
            with contextlib.suppress(OSError):
                _answer_from_what_arrived(request, self.endpoint.live)
            self.shutdown_request(request)

    def _serve_past_the_bound(self, request: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                _answer_past_the_bound(request, self.endpoint.live)
        finally:
            self.shutdown_request(request)
            self.reserve.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("circuitgate endpoint: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # so even a garbled request gets a status line
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain"
    timeout = 10  # a client that sends no complete request in time is dropped
    server_version = "circuitgate"

    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        if len(self.path) > MAX_URL:
            return self._send(HTTPStatus.REQUEST_URI_TOO_LONG, b"request line too long\n")
        if self.headers.get("Content-Length", "0") not in ("", "0"):
            return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"GET takes no body\n")
        url = urlsplit(self.path)
        if url.path == "/circuit":
            return self._circuit(endpoint, url.query)
        if url.path == "/circuit/stream":
            return self._stream(endpoint, url.query)
        if url.query:
            return self._send(HTTPStatus.BAD_REQUEST, b"no query string here\n")
        if url.path == "/healthz":
            # Never depends on the breaker: an open circuit must not get the pod restarted.
            if endpoint.live():
                return self._send(HTTPStatus.OK, b"ok\n")
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"event loop stuck\n")
        if url.path == "/readyz":
            why_not = unready_reason(endpoint.document())
            if why_not is None:
                return self._send(HTTPStatus.OK, b"ready\n")
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, why_not.encode() + b"\n")
        if url.path == "/metrics":
            return self._send(
                HTTPStatus.OK, endpoint.metrics(), "text/plain; version=0.0.4; charset=utf-8"
            )
        return self._send(HTTPStatus.NOT_FOUND, b"not found: try /circuit\n")

    def _circuit(self, endpoint: BreakerEndpoint, query: str) -> None:
        try:
            parsed = parse_circuit_query(query, max_wait=endpoint.max_wait)
        except BadQuery as exc:
            return self._bad_query(exc)
        if parsed.since is not None and parsed.wait > 0:
            endpoint.wait_past(parsed.since, parsed.wait)
        return self._send(HTTPStatus.OK, endpoint.document().dumps(), "application/json")

    def _stream(self, endpoint: BreakerEndpoint, query: str) -> None:
        """Server-Sent Events until the client goes or the endpoint stops; a client that stops
        reading is dropped once a write has waited ``timeout`` seconds."""
        try:
            parsed = parse_stream_query(query, max_wait=endpoint.max_wait)
        except BadQuery as exc:
            return self._bad_query(exc)
        self.close_connection = True  # the stream ends with its connection
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in endpoint.stream(parsed):
            self.wfile.write(chunk)

    def _bad_query(self, error: BadQuery) -> None:
        body = json.dumps({"error": str(error)}).encode()
        return self._send(HTTPStatus.BAD_REQUEST, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed requests (bad request line, too many headers, other methods): a short
        # answer and a closed connection, never a traceback.
        self.close_connection = True
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("circuitgate endpoint: " + format, *args)


_UNREADY_CONSUMER = {
    "stalled": "consumer_stalled",
    "disconnected": "broker_disconnected",
    "starting": "consumer_starting",
    "stopping": "consumer_stopping",
}


def unready_reason(document: WorkerDocument) -> str | None:
    """Why ``/readyz`` answers 503, None when it answers 200: the consumer first (a stalled
    consumer would not resume when the circuit closes), then an open circuit."""
    if document.consumer is not None and document.consumer.status in _UNREADY_CONSUMER:
        return _UNREADY_CONSUMER[document.consumer.status]
    if any(breaker.state in ("open", "forced_open") for breaker in document.breakers):
        return "circuit open"
    return None


def _states(document: WorkerDocument) -> tuple[str, ...]:
    """What a stream sends at once when it changes; counters wait `STREAM_MIN_GAP`."""
    consumer = (document.consumer.status,) if document.consumer is not None else ()
    return tuple(breaker.state for breaker in document.breakers) + consumer


class BreakerEndpoint:
    """``/circuit`` (with long-poll and a stream), ``/healthz``, ``/readyz`` and ``/metrics``
    on one port."""

    def __init__(
        self,
        *,
        document: Callable[[], WorkerDocument],
        sequence: Callable[[], int],
        metrics: Callable[[], bytes],
        live: Callable[[], bool] = lambda: True,
        host: str = "0.0.0.0",
        port: int = 9808,
        max_connections: int = 256,
        max_wait: float = 60.0,
        poll_interval: float = 0.005,
    ) -> None:
        self.document = document
        self.metrics = metrics
        self.live = live
        self.max_connections = max_connections
        self.max_wait = max_wait
        self._address = (host, port)
        self._sequence = sequence
        self._notifier = _ChangeNotifier(sequence, poll_interval)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port once started, if 0 was asked for)."""
        if self._server is None:
            return self._address
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def wait_past(self, since: int, timeout: float) -> None:
        self._notifier.wait_past(since, timeout)

    def stream(self, query: StreamQuery) -> Iterator[bytes]:
        """What a stream sends, each piece when it is due, until the endpoint stops: the
        document when the sequence passes what was sent (at once if nothing was), else a
        keep-alive every ``keepalive`` seconds."""
        sent, states, last_event = query.since, None, -math.inf
        while not self._notifier.stopped:
            if sent is not None:
                self._notifier.wait_past(sent, query.keepalive)
                if self._notifier.stopped:
                    return
                if self._sequence() <= sent:
                    yield _KEEPALIVE
                    continue
            document = self.document()
            pause = last_event + STREAM_MIN_GAP - time.monotonic()
            while pause > 0 and _states(document) == states:  # a state change ends the pause
                self._notifier.wait_past(document.sequence, pause)
                self._notifier.pause(min(_RECHECK, pause))  # a document per change is too many
                if self._notifier.stopped:
                    return
                document = self.document()
                pause = last_event + STREAM_MIN_GAP - time.monotonic()
            sent, states, last_event = document.sequence, _states(document), time.monotonic()
            yield _event(document)

    def start(self) -> None:
        self._server = _Server(self._address, self)
        self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._notifier.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="circuitgate-endpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._notifier.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
