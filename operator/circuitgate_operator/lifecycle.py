"""The operator process from kopf's startup to its cleanup: what all policies share (the
cluster view, the API door, the Event recorder, the metrics) and the policies' loops."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
from aiohttp import web

from .act.api import KubeApi, load_api_client
from .act.apply import Applier
from .act.events import EventRecorder
from .act.listing import Lister
from .config import OperatorConfig
from .contract import BreakerState
from .decide.ledger import TripLedger
from .heap import keep_old_objects_frozen
from .metrics import Metrics, serve_metrics
from .reconcile import TAKEOVER_HOLD_SECONDS, PolicyLoop
from .view import ClusterView
from .watch.pool import new_session

__all__ = ("Operator", "Store")

# The view's stores that kopf's watch events feed.
Store = Literal["policies", "pods", "nodes", "circuit_states"]


class Operator:
    """Everything one operator process shares: kept in kopf's memo."""

    def __init__(self, config: OperatorConfig, *, peered: bool = False) -> None:
        self.config = config
        # With peers, a replica taking over waits before its first decisions until the writes
        # the replica it replaces had sent have landed (`PolicyLoop` counts from here).
        self.peered = peered
        self.active_since = time.monotonic()  # the start, or when loops ran again after none
        self.running_loops = 0
        self.view = ClusterView()
        self.metrics = Metrics()
        self.trips: dict[str, TripLedger] = {}
        self.loops: dict[str, PolicyLoop] = {}
        # Cordons sent and not yet answered (node -> policy keys), counted by every policy's cap.
        self.cordons_in_flight: dict[str, set[str]] = {}
        self.stream_openings = asyncio.Semaphore(self.config.stream_openings)
        self._api: KubeApi | None = None
        self._session: aiohttp.ClientSession | None = None
        self._recorder: EventRecorder | None = None
        self._applier: Applier | None = None
        self._lister: Lister | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._api = KubeApi(
            load_api_client(threads=self.config.api_threads),
            threads=self.config.api_threads,
            on_write=lambda verb, _: self.metrics.api_writes.labels(verb=verb).inc(),
        )
        self._session = new_session()
        self._recorder = EventRecorder(self._api)
        self._lister = Lister(self._api, self.view)
        self._applier = Applier(
            self._api,
            self.view,
            self._recorder,
            on_unready=self.metrics.trip_to_condition.observe,
        )
        self._tasks.append(asyncio.create_task(self._recorder.run(), name="circuitgate events"))
        self._tasks.append(asyncio.create_task(keep_old_objects_frozen(), name="circuitgate heap"))
        if self.config.metrics_address:
            host, _, port = self.config.metrics_address.rpartition(":")
            self._metrics_runner = await serve_metrics(self.metrics, host or "0.0.0.0", int(port))

    async def stop(self) -> None:
        for loop in list(self.loops.values()):
            await loop.pool.close()
        if self._recorder is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._recorder.drain()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._api is not None:
            self._api.close()

    async def takeover_settled(self) -> None:
        """Return once a peered replica may decide: `TAKEOVER_HOLD_SECONDS` after it started
        or took over, when the writes of the replica it replaces have landed."""
        if self.peered:
            await asyncio.sleep(self.active_since + TAKEOVER_HOLD_SECONDS - time.monotonic())

    @property
    def api(self) -> KubeApi:
        assert self._api is not None, "operator not started"
        return self._api

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "operator not started"
        return self._session

    @property
    def recorder(self) -> EventRecorder:
        assert self._recorder is not None, "operator not started"
        return self._recorder

    @property
    def lister(self) -> Lister:
        """The one Lister the policy loops share, so one namespace is listed once."""
        assert self._lister is not None, "operator not started"
        return self._lister

    @property
    def applier(self) -> Applier:
        assert self._applier is not None, "operator not started"
        return self._applier

    def observe(self, store: Store, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event from kopf: update the view and wake who depends on it."""
        changed = getattr(self.view, store).observe(body, deleted=event_type == "DELETED")
        if changed:
            namespace = (body.get("metadata") or {}).get("namespace")
            self.view.notify(None if store == "nodes" else namespace)

    async def run_policy(self, namespace: str, name: str) -> None:
        await PolicyLoop(self, namespace, name).run()

    def update_gauges(self) -> None:
        self.metrics.watched_pods.set(sum(len(loop.pool) for loop in self.loops.values()))
        totals: Counter[str] = Counter()
        for loop in self.loops.values():
            totals.update(loop.states)
        for state in BreakerState:
            self.metrics.circuits.labels(state=state).set(totals.get(state, 0))
