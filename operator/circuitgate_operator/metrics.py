"""The operator's own Prometheus metrics, served on the event loop by a tiny aiohttp app."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .act.apply import ApplyResult
from .contract import BreakerState
from .decide.intents import Plan

__all__ = ("Metrics", "serve_metrics")


class Metrics:
    """One registry per operator (not the global one), so tests can run several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.watched_pods = Gauge(
            "circuitgate_operator_watched_pods",
            "Pods whose breaker endpoint the operator follows.",
            registry=self.registry,
        )
        self.circuits = Gauge(
            "circuitgate_operator_circuits",
            "Watched pods by circuit state.",
            ["state"],
            registry=self.registry,
        )
        for state in BreakerState:
            self.circuits.labels(state=state)
        self.actions = Counter(
            "circuitgate_operator_actions",
            "Changes made to pods and nodes (mark_unready, mark_ready, cordon, uncordon, "
            "release, forget, evict).",
            ["action"],
            registry=self.registry,
        )
        self.suppressed = Counter(
            "circuitgate_operator_actions_suppressed",
            "Actions held back, by cause (cap, storm, paused, dry_run, budget).",
            ["action", "cause"],
            registry=self.registry,
        )
        self.endpoint_errors = Counter(
            "circuitgate_operator_endpoint_errors",
            "Endpoint reads that gave no valid document, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.api_writes = Counter(
            "circuitgate_operator_api_writes",
            "Write requests (POST, PUT, PATCH, DELETE) the operator sent to the API server.",
            ["verb"],
            registry=self.registry,
        )
        self.reconciles = Counter(
            "circuitgate_operator_reconciles",
            "Reconciliations of a policy finished (its plan decided and applied).",
            ["policy"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "circuitgate_operator_reconcile_seconds",
            "One pass of a policy's loop: planning and applying its plan.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.trip_to_condition = Histogram(
            "circuitgate_operator_trip_to_condition_seconds",
            "From a breaker opening (its opened_at) to its pod's condition written False.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

    def count(self, plan: Plan, result: ApplyResult) -> None:
        """What a plan held back and what applying it did."""
        for action, count in result.actions.items():
            self.actions.labels(action=action).inc(count)
        for (action, cause), count in plan.suppressed.items():
            self.suppressed.labels(action=action, cause=cause).inc(count)
        if result.eviction_blocked:
            blocked = self.suppressed.labels(action="evict", cause="budget")
            blocked.inc(len(result.eviction_blocked))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Start ``GET /metrics`` on host:port; the caller cleans the runner up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
