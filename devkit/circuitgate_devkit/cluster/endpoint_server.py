"""A stand-in for the worker's breaker endpoint, as a real process serving many loopback addresses.

It follows the contract exactly (``GET /circuit``, long-poll with ``?since=SEQ&wait=SECONDS``,
``/healthz``, ``/readyz``), with documents built by ``circuitgate.contract`` itself, and can be
told to misbehave (malformed, oversized, slow, refusing connections, no long-poll support,
hostile answers; ``max_wait`` caps its long-polls as a worker's setting does).
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
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from circuitgate.contract import BreakerDocument, WorkerDocument

MODES = (
    "normal", "malformed", "invalid", "oversized", "slow", "no_long_poll", "http500",
    # Hostile: a new sequence on every answer, at once; JSON nested past Python's recursion
    # limit; a time that overflows once in UTC.
    "instant_change", "nested", "year_one",
)  # fmt: skip


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

    def bump(self) -> None:
        self.sequence += 1
        self.changed.set()
        self.changed = asyncio.Event()


class Fleet:
    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoints: dict[str, Endpoint] = {}
        self.app = web.Application()
        self.app.router.add_get("/circuit", self.circuit)
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
        endpoint = self._endpoint(request)
        if request.transport is not None:
            endpoint.transports.add(request.transport)
        endpoint.total_requests += 1
        endpoint.open_requests += 1
        try:
            return await self._answer(endpoint, request)
        finally:
            endpoint.open_requests -= 1

    async def _answer(self, endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
        mode = endpoint.mode
        if mode == "slow":
            await asyncio.sleep(3600)
        if mode == "http500":
            return web.Response(status=500, text="boom")
        if mode == "malformed":
            return web.Response(
                body=b'{"schema": "circuitgate.io/breaker-state/v1", "wor',
                content_type="application/json",
            )
        if mode == "invalid":
            document = json.loads(endpoint.document())
            document["breakers"][0]["state"] = "ajar"
            return web.json_response(document)
        if mode == "nested":
            return web.Response(body=b"[" * 100_000 + b"]" * 100_000)
        if mode == "year_one":
            document = json.loads(endpoint.document())
            document["breakers"][0]["opened_at"] = "0001-01-01T00:00:00+01:00"
            return web.json_response(document)
        if mode == "instant_change":
            endpoint.bump()
            return web.Response(body=endpoint.document(), content_type="application/json")
        if mode == "oversized":
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            chunk = b" " * 65536
            for _ in range(64):  # 4 MiB of padding, streamed without a length
                await response.write(chunk)
            await response.write(endpoint.document())
            await response.write_eof()
            return response
        since = request.query.get("since")
        if since is not None and mode != "no_long_poll":
            wait = min(float(request.query.get("wait", "30")), endpoint.max_wait)
            deadline = time.monotonic() + wait
            while endpoint.sequence <= int(since):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await endpoint.changed.wait()
                except TimeoutError:
                    break
        return web.Response(body=endpoint.document(), content_type="application/json")

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
