"""A fault-injecting HTTPS proxy between an operator and the test API server, on loopback.

It terminates TLS with the API server's own certificate (issued by the test CA for
127.0.0.1, so a client that trusts the control plane trusts the proxy too), forwards each
request with its bearer token to the real API server, and streams the answer back, watch
streams included. By a seeded draw per request it answers 429 (with ``Retry-After``) or a
5xx itself, drops the connection without an answer (a TCP reset), delays the request, or cuts
a watch stream a few seconds in. Counts of what it did are in ``counts``.

    proxy = FaultProxy(control_plane).start()
    kubeconfig = proxy.kubeconfig(identity.kubeconfig, tmp_path / "faulty-kubeconfig")
    proxy.faults = Faults(too_many=0.1, server_error=0.05, reset=0.05, cut_watches=(1, 5))
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from circuitgate_devkit.cluster.control_plane import ControlPlane

__all__ = ("FaultProxy", "Faults")

# Headers that describe one hop, not the message: never passed on.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
     "proxy-connection", "te", "trailer"}
)  # fmt: skip


# Counts that are not faults: every request, and those passed on to the API server.
_NOT_FAULTS = frozenset({"requests", "forwarded"})


@dataclass(frozen=True)
class Faults:
    """Probabilities per request (drawn in this order) and what a faulted request gets."""

    too_many: float = 0.0  # 429 Too Many Requests, Retry-After: 1
    server_error: float = 0.0  # 500, 503 or 504
    reset: float = 0.0  # the connection dropped (RST), no answer
    latency: float = 0.0  # the request held for ``delay`` seconds first
    delay: float = 0.5
    cut_watches: tuple[float, float] | None = None  # a watch cut after uniform(a, b) seconds
    writes_only: bool = False  # fault only POST/PUT/PATCH/DELETE (watches still cut)


class FaultProxy:
    """The proxy, served from a thread of its own; ``faults`` may be replaced at any time."""

    def __init__(self, control_plane: ControlPlane, *, seed: int = 0) -> None:
        self.upstream = control_plane.server
        pki = control_plane.ca_file.parent
        self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_tls.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
        self._upstream_tls = ssl.create_default_context(cafile=str(control_plane.ca_file))
        self.faults = Faults()
        self.counts: Counter[str] = Counter()
        self.held: list[str] = []  # "METHOD /path" of every delayed request, in order
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, source: Path, target: Path) -> Path:
        """A copy of the kubeconfig ``source`` whose server is this proxy."""
        config = yaml.safe_load(source.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
        target.write_text(yaml.safe_dump(config))
        return target

    @property
    def faulted(self) -> int:
        """Requests we answered, dropped, delayed or (watches) cut."""
        with self._lock:
            return sum(n for key, n in self.counts.items() if key not in _NOT_FAULTS)

    @property
    def requests(self) -> int:
        with self._lock:
            return self.counts["requests"]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="fault proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        connector = aiohttp.TCPConnector(ssl=self._upstream_tls, limit=0)
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            self._session = session
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{path:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._server_tls)
            await site.start()
            server = site._server  # the port the OS chose
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            try:
                await self._stopped.wait()
            finally:
                await runner.cleanup()

    # -- requests ----------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _draw(self) -> float:
        with self._lock:
            return self._random.random()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._count("requests")
        faults = self.faults
        watch = request.query.get("watch", "").lower() in ("true", "1")
        write = request.method in ("POST", "PUT", "PATCH", "DELETE")
        if write or not faults.writes_only:
            roll = self._draw()
            if roll < faults.too_many:
                self._count("429")
                return web.json_response(_status(429, "TooManyRequests"), status=429,
                                         headers={"Retry-After": "1"})  # fmt: skip
            roll -= faults.too_many
            if roll < faults.server_error:
                code = (500, 503, 504)[int(self._draw() * 3)]
                self._count(str(code))
                return web.json_response(_status(code, "InternalError"), status=code)
            roll -= faults.server_error
            if roll < faults.reset:
                self._count("reset")
                _reset(request)
                raise asyncio.CancelledError  # nothing more to say on a dropped connection
            roll -= faults.reset
            if roll < faults.latency:
                self._count("delayed")
                with self._lock:
                    self.held.append(f"{request.method} {request.path}")
                await asyncio.sleep(faults.delay)
        return await self._forward(request, cut_after=_cut(faults, watch, self._draw()))

    async def _forward(
        self, request: web.Request, *, cut_after: float | None
    ) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        self._count("forwarded")
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            try:
                async with asyncio.timeout(cut_after):
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
            except TimeoutError:
                self._count("watch_cut")
                _reset(request)
                return response
            await response.write_eof()
            return response


def _cut(faults: Faults, watch: bool, draw: float) -> float | None:
    if not watch or faults.cut_watches is None:
        return None
    low, high = faults.cut_watches
    return low + (high - low) * draw


def _status(code: int, reason: str) -> dict[str, object]:
    """The body the API server itself sends with such a code."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"injected by the fault proxy ({code})", "reason": reason, "code": code,
            "details": {"retryAfterSeconds": 1}}  # fmt: skip


def _reset(request: web.Request) -> None:
    """Drop the client's connection with a TCP reset: SO_LINGER 0, then close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
