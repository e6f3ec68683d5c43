"""One policy's reconciliation loop, and the undoing of a policy that is deleted.

The loop runs inside a kopf daemon, so kopf starts it with the policy, stops it when the
policy goes or when peering pauses this replica, and never runs two for one policy. It owns
the policy's endpoint watchers; stopping it stops them and closes their connections. Like
controller-runtime's ``Reconcile``, each pass says when it wants to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .act.api import ApiError
from .act.apply import ApplyResult
from .act.events import event_name
from .act.listing import node_scopes, policy_scopes
from .act.requests import circuit_states_path
from .clock import parse_time
from .contract import BreakerState, Reading
from .decide.circuit_state import startup_grace_ends
from .decide.cleanup import plan_cleanup
from .decide.intents import EventIntent, Eviction, Plan
from .decide.ledger import TripLedger
from .decide.memo import PlanMemo
from .decide.nodes import CORDONED_BY, Trip, cooldown_deadline
from .decide.observation import PolicyObservation
from .decide.outliers import is_outlier, sustained_at
from .decide.plan import plan_policy
from .decide.readiness import open_evidence_ends
from .decide.selection import Selection, endpoint_url, resolve_port, select_pods
from .model import (
    POLICY_LABEL,
    CircuitStateView,
    PodView,
    PolicyView,
    parse_circuit_state,
    parse_policy,
)
from .watch.pool import Target, WatcherPool

if TYPE_CHECKING:
    from .lifecycle import Operator

__all__ = ("PolicyLoop", "clean_up_policy")

logger = logging.getLogger(__name__)

COALESCE_SECONDS = 0.02
# How soon after a pass that wrote the loop looks at what its writes did (a restore lets the
# state go, a freed cap lets a mark through), unless something else wakes it first: a trip
# arriving meanwhile is then decided in one pass, not after a pass begun for nothing new.
FOLLOW_UP_SECONDS = 0.5
EVICTION_RETRY_SECONDS = 5.0
_MAX_RETRY_SECONDS = 30.0
# How long a stopping loop waits for the answers to writes it has sent (kopf cancels the
# daemon for good after 10 s).
APPLY_DRAIN_SECONDS = 8.0
# How long a peered replica that takes over (starts, or resumes after a pause) waits before it
# decides: the replica it replaces may still have writes on their way for that long, which no
# listing shows yet (a cap counted without them would be overshot).
TAKEOVER_HOLD_SECONDS = APPLY_DRAIN_SECONDS + 2.0
# How often the view is listed again (by name), to forget what kopf's resumed watches no
# longer list.
RELIST_SECONDS = 300.0
# How often a periodic pass plans every pod afresh, without the memo (which keeps decisions only
# while their inputs are unchanged, so this is a second line, not the first).
FULL_PASS_SECONDS = RELIST_SECONDS


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
            openings=operator.stream_openings,
        )
        self._reconciles = operator.metrics.reconciles.labels(policy=self.key)
        self._posted: set[str] = set()
        self._evicted: dict[str, float] = {}
        self._unmarked: dict[str, Eviction] = {}  # granted, our mark not landed yet
        self._failures = 0
        self._applying: asyncio.Future[ApplyResult] | None = None
        self.memo = PlanMemo()
        self._full_pass_at = time.monotonic()
        # The selection as of the pods and the policies' selectors it was made of, and the
        # watched targets as of that selection and the endpoint settings.
        self._selection: tuple[object, Selection] | None = None
        self._synced: tuple[Selection, tuple[object, ...]] | None = None

    @property
    def ledger(self) -> TripLedger:
        policy = self.operator.view.policies.get(self.namespace, self.name)
        uid = policy.uid if policy is not None else self.key
        return self.operator.trips.setdefault(uid, TripLedger())

    def _on_reading(self, uid: str, reading: Reading) -> None:
        if reading.error is not None:
            self.operator.metrics.endpoint_errors.labels(kind=reading.error).inc()
        pod = self.pods_by_uid.get(uid)
        policy = self.operator.view.policies.get(self.namespace, self.name)
        if pod is not None and policy is not None:
            limit = policy.spec.nodes.trip_threshold
            self.ledger.observe(pod.node_name, pod.name, reading, time.time(), limit=limit)
        if self.readings.get(uid) != reading:
            self.readings[uid] = reading
            self.wake.set()

    async def run(self) -> None:
        view, operator = self.operator.view, self.operator
        if not operator.running_loops:  # kopf starts every loop at once, on start and resume
            operator.active_since = time.monotonic()
        operator.running_loops += 1
        deadline: float | None = None
        relisting = asyncio.create_task(self._forget_gone(), name=f"circuitgate relist {self.key}")
        try:
            await operator.takeover_settled()
            await self._first_listing()
            view.listen(self.namespace, self.wake)
            operator.loops[self.key] = self
            self.wake.set()
            while True:
                timeout = self.operator.config.resync_seconds
                if deadline is not None:
                    timeout = min(timeout, max(deadline - time.time(), 0.0))
                woke = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        woke = await self.wake.wait()
                if not woke and time.monotonic() - self._full_pass_at >= FULL_PASS_SECONDS:
                    self.memo.clear()  # every pod planned afresh now and then
                    self._full_pass_at = time.monotonic()
                await asyncio.sleep(COALESCE_SECONDS)
                self.wake.clear()
                with self.operator.metrics.reconcile_seconds.time():
                    deadline = await self.reconcile()
                self._reconciles.inc()
        finally:
            relisting.cancel()
            operator.running_loops -= 1
            view.unlisten(self.namespace, self.wake)
            if self._applying is not None and not self._applying.done():
                # Writes already sent land whatever happens to us: have their answers before
                # the deletion handler, which waits for this loop to go, looks at the nodes.
                await asyncio.wait([self._applying], timeout=APPLY_DRAIN_SECONDS)
            if self.operator.loops.get(self.key) is self:
                del self.operator.loops[self.key]
            await self.pool.close()
            self.operator.update_gauges()

    async def _first_listing(self) -> None:
        """No decision before a complete listing made after this loop began: kopf's own may
        still be under way (after a restart), or have missed deletions (after a pause)."""
        started, failures = time.time(), 0
        while not await self._list(started):
            failures += 1
            await asyncio.sleep(min(2.0**failures, _MAX_RETRY_SECONDS))

    async def _list(self, since: float, *, names_only: bool = False) -> bool:
        """Have everything this policy depends on listed completely (or ``names_only``, to
        forget what is gone) since ``since``; False (logged) if the API server could not."""
        lister, scopes = self.operator.lister, policy_scopes(self.namespace)
        try:
            if names_only:
                changed = await lister.forget_gone(scopes, since=since)
            else:
                changed = await lister.ensure(scopes, since=since)
        except ApiError as error:
            logger.warning("policy %s: could not list what it depends on: %s", self.key, error)
            return False
        if changed:
            self.operator.view.notify(self.namespace)
        return True

    async def _forget_gone(self) -> None:
        """Every RELIST_SECONDS, list what the policy depends on by name and forget what is
        gone; beside the passes, so a trip never waits for it."""
        while True:
            await asyncio.sleep(RELIST_SECONDS)
            try:  # _list logs the API server's refusals; anything else must not end this
                await self._list(time.time() - RELIST_SECONDS, names_only=True)
            except Exception:
                logger.exception("policy %s: listing by name failed", self.key)

    async def reconcile(self) -> float | None:
        """One pass: watchers to match the selection, then decide and apply. Returns when the
        next time-based check is due (cool-downs, retries), if any."""
        view = self.operator.view
        policy = view.policies.get(self.namespace, self.name)
        if policy is None or policy.deleting:
            await self.pool.sync({})
            self._synced = None
            return None
        now = time.time()
        pods = view.pods.in_namespace(self.namespace)
        selection = self._select(pods)
        # The selection's pods as they are now: it is kept while only their conditions change.
        selected = [pods[pod.name] for pod in selection.watched.get(self.key, [])]
        endpoints = (policy.spec.port, policy.spec.path, policy.spec.watch)
        synced = self._synced
        if (
            synced is None
            or synced[0] is not selection
            or synced[1] != endpoints
            or self.pool.ended
        ):
            await self._sync_watchers(policy, selected)
            self._synced = (selection, endpoints)
        spec = policy.spec
        keep = max(spec.nodes.window, spec.nodes.cooldown)
        self.ledger.retain({pod.name for pod in selected})
        if spec.outliers.enabled and spec.outliers.count_node_trips:
            self._count_outlier_trips(policy, selected)
        trips = self.ledger.by_node(keep, now)
        self._evicted = {p: t for p, t in self._evicted.items() if now - t < EVICTION_RETRY_SECONDS}
        # Taken before the marks are retried: ``pods`` was read before they land.
        unmarked = frozenset(self._unmarked)
        await self._retry_marks(pods)
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
            evicted_unmarked=unmarked,
            watched_elsewhere=frozenset(
                pod.name
                for key, watched in selection.watched.items()
                if key != self.key
                for pod in watched
            ),
            # Every watcher hands over a Reading within its timeout of its turn to open.
            first_read_pending=frozenset(self.pods_by_uid.keys() - self.readings.keys()),
            cordons_in_flight={
                node: frozenset(owners) for node, owners in self.operator.cordons_in_flight.items()
            },
        )
        plan = plan_policy(observation, self.memo)
        self._count_states(plan, selected)
        # Counted as in flight before this task yields: no other policy plans without them.
        sent = {c.node for c in plan.nodes if c.action == "cordon"}
        for node in sent:
            self.operator.cordons_in_flight.setdefault(node, set()).add(self.key)
        self._applying = asyncio.ensure_future(self._apply(plan, sent))
        result = await asyncio.shield(self._applying)
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
        self.operator.metrics.count(plan, result)
        for pod in result.evicted + result.eviction_blocked:
            self._evicted[pod] = now
        self._unmarked.update((e.pod, e) for e in result.unmarked)
        return self._next_deadline(policy, result, trips, now)

    def _count_outlier_trips(self, policy: PolicyView, selected: list[PodView]) -> None:
        """Each outlier its CircuitState records counts as a trip on its node."""
        stored = self.operator.view.circuit_states.in_namespace(self.namespace)
        for pod in selected:
            state = stored.get(pod.name)
            if state is None or not pod.node_name or not is_outlier(state.status):
                continue
            since = state.status["outlier"].get("since")
            began = parse_time(since)
            if isinstance(since, str) and began is not None:
                at = began + policy.spec.outliers.sustain
                limit = policy.spec.nodes.trip_threshold
                self.ledger.note_outlier(pod.node_name, pod.name, since, at, limit=limit)

    def _select(self, pods: Mapping[str, PodView]) -> Selection:
        """The namespace's selection, made again only when a pod's placement or a policy's
        selector changed (not on every condition or status written)."""
        policies = self.operator.view.policies.in_namespace(self.namespace).values()
        key = (
            self.operator.view.pods.shape_generation(self.namespace),
            tuple((p.key, p.deleting, p.spec.selector) for p in policies),
        )
        if self._selection is None or self._selection[0] != key:
            self._selection = (key, select_pods(pods.values(), policies))
        return self._selection[1]

    async def _retry_marks(self, pods: Mapping[str, PodView]) -> None:
        """Mark again the pods whose granted eviction did not take our mark; a pod gone, or
        of that name but another uid (created again), needs none."""
        for name, eviction in list(self._unmarked.items()):
            pod = pods.get(name)
            if (
                pod is None
                or pod.uid != eviction.uid
                or await self.operator.applier.mark_evicted(eviction)
            ):
                del self._unmarked[name]

    async def _apply(self, plan: Plan, cordons: set[str]) -> ApplyResult:
        """Apply the plan; its ``cordons`` stop counting as in flight once answered (the view
        has the node then, or the cordon failed)."""
        in_flight = self.operator.cordons_in_flight
        try:
            return await self.operator.applier.apply(plan)
        finally:
            for node in cordons:  # only ours: another policy may have one on its way too
                owners = in_flight.get(node, set())
                owners.discard(self.key)
                if not owners:
                    in_flight.pop(node, None)

    def _next_deadline(
        self,
        policy: PolicyView,
        result: ApplyResult,
        trips: Mapping[str, list[Trip]],
        now: float,
    ) -> float | None:
        if result.conflicts:
            self.wake.set()  # read again at once
        deadlines: list[float] = []
        if result.writes:
            deadlines.append(time.time() + FOLLOW_UP_SECONDS)
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
        stored = self.operator.view.circuit_states.in_namespace(self.namespace)
        pods = self.operator.view.pods.in_namespace(self.namespace)
        for uid, watched in self.pods_by_uid.items():
            reading = self.readings.get(uid)
            if reading is not None and reading.reachable:
                continue
            pod = pods.get(watched.name, watched)  # its containers as they are now
            # An endpoint still unreachable when its startup grace ends is worth a Warning
            # then; an open state it can no longer confirm stops holding the pod unready.
            state = stored.get(pod.name)
            ends = open_evidence_ends(state.status) if state is not None else None
            grace = startup_grace_ends(
                pod,
                now,
                port=resolve_port(pod, policy.spec.port),
                watched_since=state.created_at if state is not None else None,
            )
            deadlines += [t for t in (grace, ends) if t and t > now]
        if policy.spec.outliers.enabled:  # a deviating pod is an outlier once it lasts
            for watched in self.pods_by_uid.values():
                state = stored.get(watched.name)
                due = sustained_at(state.status, policy.spec.outliers) if state else None
                if due is not None and due > now:
                    deadlines.append(due)
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
        await self.pool.sync(targets)
        for uid in set(self.readings) - set(targets):
            del self.readings[uid]

    def _count_states(self, plan: Plan, selected: list[PodView]) -> None:
        written = {w.name: w.status.get("state", BreakerState.UNKNOWN) for w in plan.circuit_states}
        stored = self.operator.view.circuit_states.in_namespace(self.namespace)
        states: Counter[str] = Counter()
        for pod in selected:
            if pod.uid in self.pods_by_uid:
                state = written.get(pod.name)
                if state is None and pod.name in stored:
                    state = stored[pod.name].status.get("state")
                states[state or BreakerState.UNKNOWN] += 1
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


async def clean_up_policy(operator: Operator, body: Mapping[str, Any]) -> bool:
    """Undo what a deleted policy did; True once nothing is left to undo. A second pass removes
    the CircuitStates of the pods the first one restored.

    kopf stops the policy's loop in parallel with this handler: until it has stopped (with
    the answers to its writes, a cordon among them) nothing is decided, and then the nodes are
    listed afresh, so a cordon that landed after the view last showed the node is undone too.
    Right after a takeover it waits as the loops do, for the replaced replica's writes.
    """
    policy = parse_policy(body)
    await operator.takeover_settled()  # a replaced replica's cordon may still be on its way
    if policy.key in operator.loops:
        return False
    try:
        await operator.lister.ensure(node_scopes(), since=time.time())
    except ApiError as error:
        logger.warning("policy %s: could not list the nodes to clean up: %s", policy.key, error)
        return False
    for _ in range(2):
        plan = plan_cleanup(
            policy,
            pods=operator.view.pods.in_namespace(policy.namespace),
            circuit_states=await _circuit_states_of(operator, policy),
            nodes=operator.view.nodes_by_name(),
            now=time.time(),
            others=operator.view.policies.in_namespace(policy.namespace).values(),
        )
        result = await operator.applier.apply(plan)
        operator.metrics.count(plan, result)
        if result.failures or result.conflicts:
            return False
        if not plan.conditions:
            operator.trips.pop(policy.uid, None)
            return True
    return False


async def _circuit_states_of(operator: Operator, policy: PolicyView) -> dict[str, CircuitStateView]:
    """The policy's CircuitStates as the API lists them now (the view may lag)."""
    answer = await operator.api.request(
        "GET",
        circuit_states_path(policy.namespace),
        query={"labelSelector": f"{POLICY_LABEL}={policy.label}"},
    )
    states = [parse_circuit_state(item) for item in answer.get("items") or ()]
    return {state.name: state for state in states}
