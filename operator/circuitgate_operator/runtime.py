"""The running operator: the cluster view, the API door, and one reconciliation loop per policy.

Each policy's loop runs inside a kopf daemon, so kopf starts it with the policy, stops it when
the policy goes or when peering pauses this replica, and never runs two for one policy. The loop
owns the policy's endpoint watchers; stopping it stops them and closes their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp

from .act.api import ApiError, KubeApi, load_api_client
from .act.apply import Applier, ApplyResult
from .act.events import EventRecorder, event_name
from .clock import parse_time
from .config import OperatorConfig
from .contract import Reading
from .decide.intents import EventIntent, ObjectRef, Plan
from .decide.nodes import CORDONED_BY, Trip, cooldown_deadline
from .decide.plan import PolicyObservation, plan_cleanup, plan_policy
from .decide.selection import endpoint_url, select_pods
from .metrics import Metrics, error_kind, serve_metrics
from .model import (
    POLICY_LABEL,
    CircuitStateView,
    PodView,
    PolicyView,
    parse_circuit_state,
    parse_policy,
)
from .names import GROUP, VERSION
from .view import ClusterView
from .watch.pool import Target, WatcherPool, new_session

__all__ = ("Operator", "PolicyLoop", "TripLedger")

logger = logging.getLogger(__name__)

COALESCE_SECONDS = 0.02
EVICTION_RETRY_SECONDS = 5.0
_MAX_RETRY_SECONDS = 30.0


class TripLedger:
    """Trips per node for one policy, one per (pod, openedAt), so re-reading the same open
    breaker (after a restart too) never counts it twice."""

    def __init__(self) -> None:
        self._trips: dict[str, dict[tuple[str, str], float]] = {}

    def record(self, node: str, pod: str, opened_at: str, now: float) -> bool:
        at = min(parse_time(opened_at) or now, now)
        trips = self._trips.setdefault(node, {})
        if (pod, opened_at) in trips:
            return False
        trips[(pod, opened_at)] = at
        return True

    def by_node(self, keep: float, now: float) -> dict[str, list[Trip]]:
        """Trips younger than keep seconds (older ones are dropped for good)."""
        result: dict[str, list[Trip]] = {}
        for node, trips in list(self._trips.items()):
            for key, at in list(trips.items()):
                if at <= now - keep:
                    del trips[key]
            if not trips:
                del self._trips[node]
                continue
            result[node] = [
                Trip(pod, at) for (pod, _), at in sorted(trips.items(), key=lambda t: t[1])
            ]
        return result


class PolicyLoop:
    """Reconciles one policy whenever what it depends on changes, until cancelled."""

    def __init__(self, operator: Operator, namespace: str, name: str) -> None:
        self.operator = operator
        self.namespace = namespace
        self.name = name
        self.key = f"{namespace}/{name}"
        self.wake = asyncio.Event()
        self.readings: dict[str, Reading] = {}
        self.pods_by_uid: dict[str, PodView] = {}
        self.states: Counter[str] = Counter()
        self.pool = WatcherPool(
            operator.session,
            self._on_reading,
            max_bytes=operator.config.max_document_bytes,
            name=self.key,
        )
        self._posted: set[str] = set()
        self._watch_started: dict[str, float] = {}
        self._evicted: dict[str, float] = {}
        self._failures = 0

    @property
    def ledger(self) -> TripLedger:
        policy = self.operator.view.policies.get(self.namespace, self.name)
        uid = policy.uid if policy is not None else self.key
        return self.operator.trips.setdefault(uid, TripLedger())

    def _on_reading(self, uid: str, reading: Reading) -> None:
        if not reading.reachable:
            self.operator.metrics.endpoint_errors.labels(kind=error_kind(reading.reason)).inc()
        pod = self.pods_by_uid.get(uid)
        if pod is not None and reading.state in ("open", "half_open") and reading.opened_at:
            self.ledger.record(pod.node_name, pod.name, reading.opened_at, time.time())
        if self.readings.get(uid) != reading:
            self.readings[uid] = reading
            self.wake.set()

    async def run(self) -> None:
        view = self.operator.view
        await self._seed_circuit_states()
        view.listen(self.namespace, self.wake)
        self.operator.loops[self.key] = self
        self.wake.set()
        deadline: float | None = None
        try:
            while True:
                timeout = self.operator.config.resync_seconds
                if deadline is not None:
                    timeout = min(timeout, max(deadline - time.time(), 0.0))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
                await asyncio.sleep(COALESCE_SECONDS)
                self.wake.clear()
                deadline = await self.reconcile()
        finally:
            view.unlisten(self.namespace, self.wake)
            if self.operator.loops.get(self.key) is self:
                del self.operator.loops[self.key]
            await self.pool.close()
            self.operator.update_gauges()

    async def _seed_circuit_states(self) -> None:
        """Put the namespace's CircuitStates in the view before the first decision.

        kopf delivers each resource's initial listing on its own: after a restart the pods and
        the endpoint readings can arrive before the CircuitStates, and a plan made then would
        write them again and repeat their Events.
        """
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/circuitstates"
        try:
            answer = await self.operator.api.request("GET", path)
        except ApiError as error:
            logger.warning("could not list CircuitStates in %s: %s", self.namespace, error)
            return
        for item in answer.get("items") or ():
            self.operator.observe("circuit_states", "ADDED", item)

    async def reconcile(self) -> float | None:
        """One pass: watchers to match the selection, then decide and apply. Returns when the
        next time-based check is due (cool-downs, retries), if any."""
        view = self.operator.view
        policy = view.policies.get(self.namespace, self.name)
        if policy is None or policy.deleting:
            await self.pool.sync({})
            return None
        now = time.time()
        pods = view.pods.in_namespace(self.namespace)
        policies = view.policies.in_namespace(self.namespace).values()
        selection = select_pods(pods.values(), policies)
        selected = selection.watched.get(self.key, [])
        await self._sync_watchers(policy, selected)
        spec = policy.spec
        keep = max(spec.nodes.window, spec.nodes.cooldown)
        trips = self.ledger.by_node(keep, now)
        self._evicted = {p: t for p, t in self._evicted.items() if now - t < EVICTION_RETRY_SECONDS}
        observation = PolicyObservation(
            policy=policy,
            selected=selected,
            pods=pods,
            readings=self.readings,
            circuit_states=view.circuit_states.in_namespace(self.namespace),
            nodes=view.nodes_by_name(),
            trips=trips,
            now=now,
            overlapping={
                key.split("/", 1)[1]: names
                for key, names in selection.overlapping.items()
                if key.startswith(f"{self.namespace}/")
            },
            evicted_recently=frozenset(self._evicted),
            first_read_pending=frozenset(
                uid
                for uid, started in self._watch_started.items()
                if uid not in self.readings and now - started < policy.spec.watch.timeout
            ),
        )
        plan = plan_policy(observation)
        self._count_states(plan, selected)
        result = await self.operator.applier.apply(plan)
        if logger.isEnabledFor(logging.DEBUG) and (
            result.writes or result.failures or plan.suppressed
        ):
            logger.debug(
                "policy %s: %d writes, %d failures, %d conflicts, actions %s, suppressed %s",
                self.key,
                result.writes,
                result.failures,
                result.conflicts,
                result.actions,
                plan.suppressed,
            )
        self._post_new_events(plan.events)
        self.operator.record(plan, result)
        for pod in result.evicted + result.eviction_blocked:
            self._evicted[pod] = now
        for pod in result.evicted:
            self.operator.recorder.post(self._evicted_event(pod))
        return self._next_deadline(policy, plan, result, trips, now)

    def _next_deadline(
        self,
        policy: PolicyView,
        plan: Plan,
        result: ApplyResult,
        trips: Mapping[str, list[Trip]],
        now: float,
    ) -> float | None:
        if result.writes or result.conflicts:
            self.wake.set()  # see our own writes' consequences (and re-read on conflict)
        deadlines: list[float] = []
        if result.failures:
            self._failures += 1
            deadlines.append(now + min(2.0**self._failures, _MAX_RETRY_SECONDS))
        else:
            self._failures = 0
        for node in self.operator.view.nodes:
            if node.annotations.get(CORDONED_BY) == policy.key:
                due = cooldown_deadline(node, policy.spec.nodes, trips.get(node.name, ()))
                if due is not None:
                    deadlines.append(due + 0.05)
        deadlines += [t + EVICTION_RETRY_SECONDS for t in self._evicted.values()]
        deadlines += [
            started + policy.spec.watch.timeout
            for uid, started in self._watch_started.items()
            if uid not in self.readings
        ]
        return min(deadlines) if deadlines else None

    async def _sync_watchers(self, policy: PolicyView, selected: list[PodView]) -> None:
        targets: dict[str, Target] = {}
        pods: dict[str, PodView] = {}
        for pod in selected:
            if not pod.running:
                continue
            url = endpoint_url(pod, policy.spec.port, policy.spec.path)
            if url is not None:
                targets[pod.uid] = Target(url, policy.spec.watch)
                pods[pod.uid] = pod
        self.pods_by_uid = pods
        before = self.pool.keys
        await self.pool.sync(targets)
        now = time.time()
        self._watch_started = {
            uid: self._watch_started.get(uid, now) if uid in before else now for uid in targets
        }
        for uid in set(self.readings) - set(targets):
            del self.readings[uid]

    def _count_states(self, plan: Plan, selected: list[PodView]) -> None:
        written = {w.name: w.status.get("state", "unknown") for w in plan.circuit_states}
        stored = self.operator.view.circuit_states.in_namespace(self.namespace)
        states: Counter[str] = Counter()
        for pod in selected:
            if pod.uid in self.pods_by_uid:
                state = written.get(pod.name)
                if state is None and pod.name in stored:
                    state = stored[pod.name].status.get("state")
                states[state or "unknown"] += 1
        self.states = states
        self.operator.update_gauges()

    def _post_new_events(self, events: list[EventIntent]) -> None:
        """Post the plan's own Events (not tied to a write) when they first appear: a plan
        repeats them for as long as their cause lasts, the cluster should see them once."""
        names = {event_name(event): event for event in events}
        for name, event in names.items():
            if name not in self._posted:
                self.operator.recorder.post(event)
        self._posted = set(names)

    def _evicted_event(self, pod: str) -> EventIntent:
        view = self.operator.view.pods.get(self.namespace, pod)
        uid = view.uid if view is not None else ""
        node = view.node_name if view is not None else "?"
        message = f"evicted by policy {self.key}: it tripped on node {node}, now cordoned"
        return EventIntent(ObjectRef("Pod", pod, self.namespace, uid), "PodEvicted", message)


class Operator:
    """Everything one operator process shares: kept in kopf's memo."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.view = ClusterView()
        self.metrics = Metrics()
        self.trips: dict[str, TripLedger] = {}
        self.loops: dict[str, PolicyLoop] = {}
        self._api: KubeApi | None = None
        self._session: aiohttp.ClientSession | None = None
        self._recorder: EventRecorder | None = None
        self._applier: Applier | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_runner: Any = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._api = KubeApi(
            load_api_client(threads=self.config.api_threads),
            threads=self.config.api_threads,
            on_write=lambda verb, _: self.metrics.api_writes.labels(verb=verb).inc(),
        )
        self._session = new_session()
        self._recorder = EventRecorder(self._api)
        self._applier = Applier(
            self._api,
            self.view,
            self._recorder,
            on_unready=self.metrics.trip_to_condition.observe,
        )
        self._tasks.append(asyncio.create_task(self._recorder.run(), name="circuitgate events"))
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
    def applier(self) -> Applier:
        assert self._applier is not None, "operator not started"
        return self._applier

    # -- observation ---------------------------------------------------------------------------

    def observe(self, store: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event from kopf: update the view and wake who depends on it."""
        deleted = event_type == "DELETED"
        changed = getattr(self.view, store).observe(body, deleted=deleted)
        if changed:
            namespace = (body.get("metadata") or {}).get("namespace")
            self.view.notify(None if store == "nodes" else namespace)

    # -- policies ------------------------------------------------------------------------------

    async def run_policy(self, namespace: str, name: str) -> None:
        await PolicyLoop(self, namespace, name).run()

    async def cleanup_policy(self, body: Mapping[str, Any]) -> bool:
        """Undo what a deleted policy did; True once nothing is left to undo."""
        policy = parse_policy(body)
        plan = plan_cleanup(
            policy,
            pods=self.view.pods.in_namespace(policy.namespace),
            circuit_states=await self._circuit_states_of(policy),
            nodes=self.view.nodes_by_name(),
            now=time.time(),
        )
        result = await self.applier.apply(plan)
        self.record(plan, result)
        self.trips.pop(policy.uid, None)
        return result.failures == 0 and result.conflicts == 0

    async def _circuit_states_of(self, policy: PolicyView) -> dict[str, CircuitStateView]:
        """The policy's CircuitStates as the API lists them now (the view may lag)."""
        answer = await self.api.request(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{policy.namespace}/circuitstates",
            query={"labelSelector": f"{POLICY_LABEL}={policy.name}"},
        )
        states = [parse_circuit_state(item) for item in answer.get("items") or ()]
        return {state.name: state for state in states}

    # -- metrics -------------------------------------------------------------------------------

    def record(self, plan: Plan, result: ApplyResult) -> None:
        for action, count in result.actions.items():
            self.metrics.actions.labels(action=action).inc(count)
        for (action, cause), count in plan.suppressed.items():
            self.metrics.suppressed.labels(action=action, cause=cause).inc(count)

    def update_gauges(self) -> None:
        self.metrics.watched_pods.set(sum(len(loop.pool) for loop in self.loops.values()))
        totals: Counter[str] = Counter()
        for loop in self.loops.values():
            totals.update(loop.states)
        for state in ("closed", "open", "half_open", "forced_open", "forced_closed", "unknown"):
            self.metrics.circuits.labels(state=state).set(totals.get(state, 0))
