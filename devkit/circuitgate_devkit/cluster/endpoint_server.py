"""A stand-in for the worker's breaker endpoint, as a real process serving many loopback addresses.

It follows the contract exactly (``GET /circuit``, long-poll with ``?since=SEQ&wait=SECONDS``,
the stream ``GET /circuit/stream?keepalive=SECONDS``, ``/healthz``, ``/readyz``), with documents
built by ``circuitgate.contract`` itself, and can be told to misbehave (malformed, oversized,
slow, refusing connections, no long-poll or stream support, a stream gone silent, hostile
answers; ``max_wait`` caps its long-polls as a worker's setting does). Each misbehaviour
spoils a stream's events as it spoils a long-poll's answers.
A control API on its own port sets each address's breaker. When the real endpoint server
(``circuitgate.endpoint``) lands, ``FakeWorkers`` is the one class to swap.

    python -m circuitgate_devkit.cluster.endpoint_server --control-port 8123 --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from circuitgate.contract import BreakerDocument, WorkerDocument

MODES = (
    "normal", "malformed", "invalid", "oversized", "slow", "no_long_poll", "http500",
    # An older worker: no stream (404, long-poll served); a stream that stops sending anything,
    # keep-alives included, after its first event; one that sends a byte now and then but never
    # an event's end; one flooding comments after its first event; keep-alives and never an
    # event.
    "no_stream", "silent", "trickle", "flood", "no_event",
    # Hostile: a new sequence on every answer, at once; JSON nested past Python's recursion
    # limit; a time that overflows once in UTC.
    "instant_change", "nested", "year_one",
    # A loaded server: streams of this mode open one at a time, QUEUED_SECONDS each.
    "queued",
)  # fmt: skip
QUEUED_SECONDS = 0.25


@dataclass
class Endpoint:
    host: str
    port: int
    breaker: dict[str, Any] = field(
        default_factory=lambda: {
            "state": "closed",
            "consecutive_failures": 0,
            "trips": 0,
            "opened_at": None,
            "may_close_at": None,
            "consumption_paused": False,
        }
    )
    sequence: int = 1
    mode: str = "normal"
    max_wait: float = 300.0  # the longest a long-poll is held, as a worker's max_wait
    open_requests: int = 0
    total_requests: int = 0
    keepalives: int = 0
    events: int = 0  # stream events sent: a stream's answers, as requests are a long-poll's
    site: web.TCPSite | None = None
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def document(self) -> bytes:
        breaker = BreakerDocument(
            name="default",
            window_calls=0,
            window_failures=0,
            queues=(),
            paused_queues=(),
            **self.breaker,
        )
        return WorkerDocument(
            worker=f"celery@{self.host}",
            sequence=self.sequence,
            generated_at=time.time(),
            breakers=(breaker,),
        ).dumps()

    async def wait_past(self, since: int, timeout: float) -> bool:
        """Whether the sequence passed ``since`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.sequence <= since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
            except TimeoutError:
                return False
        return True

    def bump(self) -> None:
        self.sequence += 1
        self.changed.set()
        self.changed = asyncio.Event()


_PADDING = b" " * 65536


class Fleet:
    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoints: dict[str, Endpoint] = {}
        self.turns = asyncio.Lock()  # the "queued" streams' one opening at a time
        self.app = web.Application()
        self.app.router.add_get("/circuit", self.circuit)
        self.app.router.add_get("/circuit/stream", self.stream)
        self.app.router.add_get("/healthz", self.ok)
        self.app.router.add_get("/readyz", self.ok)
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)

    async def ok(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _endpoint(self, request: web.Request) -> Endpoint:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname is None:
            raise web.HTTPInternalServerError(text="no local address")
        return self.endpoints[sockname[0]]

    async def circuit(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, self._answer)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, self._stream)

    async def _counted(
        self,
        request: web.Request,
        answer: Callable[[Endpoint, web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Answer for the endpoint the request reached, counted while open and in total."""
        endpoint = self._endpoint(request)
        if request.transport is not None:
            endpoint.transports.add(request.transport)
        endpoint.total_requests += 1
        endpoint.open_requests += 1
        try:
            return await answer(endpoint, request)
        finally:
            endpoint.open_requests -= 1

    def _payload(self, endpoint: Endpoint) -> bytes:
        """The document, as the endpoint's mode spoils it."""
        mode = endpoint.mode
        if mode == "malformed":
            return b'{"schema": "circuitgate.io/breaker-state/v1", "wor'
        if mode == "invalid":
            document = json.loads(endpoint.document())
            document["breakers"][0]["state"] = "ajar"
            return json.dumps(document).encode()
        if mode == "nested":
            return b"[" * 100_000 + b"]" * 100_000
        if mode == "year_one":
            document = json.loads(endpoint.document())
            document["breakers"][0]["opened_at"] = "0001-01-01T00:00:00+01:00"
            return json.dumps(document).encode()
        if mode == "instant_change":
            endpoint.bump()
        return endpoint.document()

    async def _answer(self, endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
        mode = endpoint.mode
        if mode == "slow":
            await asyncio.sleep(3600)
        if mode == "http500":
            return web.Response(status=500, text="boom")
        if mode == "oversized":
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            for _ in range(64):  # 4 MiB of padding, streamed without a length
                await response.write(_PADDING)
            await response.write(endpoint.document())
            await response.write_eof()
            return response
        since = request.query.get("since")
        if since is not None and mode not in ("no_long_poll", "instant_change"):
            wait = min(float(request.query.get("wait", "30")), endpoint.max_wait)
            await endpoint.wait_past(int(since), wait)
        return web.Response(body=self._payload(endpoint), content_type="application/json")

    async def _stream(self, endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
        if endpoint.mode == "slow":
            await asyncio.sleep(3600)
        if endpoint.mode == "http500":
            return web.Response(status=500, text="boom")
        if endpoint.mode == "no_stream":
            raise web.HTTPNotFound(text="not found: try /circuit\n")
        if endpoint.mode == "queued":
            async with self.turns:
                await asyncio.sleep(QUEUED_SECONDS)
        keepalive = min(max(float(request.query.get("keepalive", "15")), 1.0), endpoint.max_wait)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        sent: int | None = None
        while True:
            mode = endpoint.mode
            if mode in ("slow", "silent") and sent is not None:
                await asyncio.sleep(3600)
            if mode == "no_event" or (mode == "trickle" and sent is not None):
                await response.write(b": keep-alive\n\n" if mode == "no_event" else b"data: {")
                while True:
                    await asyncio.sleep(0.2)
                    await response.write(b": keep-alive\n\n" if mode == "no_event" else b" ")
            if mode == "flood" and sent is not None:
                while True:
                    await response.write(b": flood\n\n" * 64)
                    await asyncio.sleep(0)
            if mode == "http500":  # too late for a status: the stream just ends
                return response
            if mode == "oversized":
                for _ in range(64):  # 4 MiB without an event's end
                    await response.write(_PADDING)
            if sent is None or endpoint.sequence > sent:
                sent = endpoint.sequence
                payload = self._payload(endpoint)
                await response.write(b"id: %d\nevent: circuit\ndata: %s\n\n" % (sent, payload))
                endpoint.events += 1
                await asyncio.sleep(0)  # instant_change sends without end: let others in
            elif not await endpoint.wait_past(sent, keepalive):
                await response.write(b": keep-alive\n\n")
                endpoint.keepalives += 1

    # -- control -------------------------------------------------------------------------------

    async def start_control(self, control_port: int) -> web.AppRunner:
        control = web.Application()
        control.router.add_post("/endpoints", self.add)
        control.router.add_patch("/endpoints/{host}", self.change)
        control.router.add_get("/endpoints/{host}", self.show)
        control.router.add_post("/bulk", self.bulk)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", control_port).start()
        return runner

    async def _listen(self, endpoint: Endpoint) -> None:
        if endpoint.site is None:
            endpoint.site = web.TCPSite(self.runner, endpoint.host, endpoint.port, backlog=1024)
            await endpoint.site.start()

    async def add(self, request: web.Request) -> web.Response:
        data = await request.json()
        hosts = data["hosts"] if "hosts" in data else [data["host"]]
        for host in hosts:
            if host not in self.endpoints:
                endpoint = Endpoint(host, int(data.get("port", self.port)))
                self.endpoints[host] = endpoint
                await self._listen(endpoint)
        return web.json_response({"added": len(hosts)})

    async def _apply(self, endpoint: Endpoint, data: dict[str, Any]) -> None:
        if "breaker" in data:
            endpoint.breaker.update(data["breaker"])
            endpoint.bump()
        if "max_wait" in data:
            endpoint.max_wait = float(data["max_wait"])
        if "mode" in data:
            assert data["mode"] in MODES, data["mode"]
            endpoint.mode = data["mode"]
            endpoint.bump()
        if data.get("listening") is False and endpoint.site is not None:
            site, endpoint.site = endpoint.site, None
            await site.stop()
            # A stopped worker also drops its open connections, kept-alive ones included.
            for transport in endpoint.transports:
                transport.close()
            endpoint.transports.clear()
        elif data.get("listening") is True:
            await self._listen(endpoint)

    async def change(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints[request.match_info["host"]]
        await self._apply(endpoint, await request.json())
        return await self.show(request)

    async def bulk(self, request: web.Request) -> web.Response:
        data = await request.json()
        for host in data["hosts"]:
            await self._apply(self.endpoints[host], data["change"])
        return web.json_response({"changed": len(data["hosts"])})

    async def show(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints[request.match_info["host"]]
        return web.json_response(
            {
                "open_requests": endpoint.open_requests,
                "total_requests": endpoint.total_requests,
                "keepalives": endpoint.keepalives,
                "events": endpoint.events,
                "sequence": endpoint.sequence,
                "listening": endpoint.site is not None,
            }
        )


async def serve(port: int, control_port: int) -> None:
    fleet = Fleet(port)
    await fleet.runner.setup()
    control = await fleet.start_control(control_port)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await control.cleanup()
        await fleet.runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per address and client
    asyncio.run(serve(args.port, args.control_port))


if __name__ == "__main__":
    main()
