"""Applying a Plan: the writes it lists, each followed by its Events once it succeeded.

Every write's answer goes back into the ClusterView at once, so the next decision already sees
it. Failures are logged and counted, never raised: the next reconciliation recomputes the plan
from the cluster and tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..clock import parse_time
from ..decide.intents import (
    Action,
    CircuitStateDelete,
    CircuitStateWrite,
    ConditionWrite,
    EventIntent,
    Eviction,
    NodeChange,
    Plan,
    PolicyStatusWrite,
)
from ..names import FIELD_MANAGER
from ..view import ClusterView
from .api import MERGE_PATCH, STRATEGIC_MERGE_PATCH, ApiError, KubeApi
from .events import EventRecorder
from .requests import (
    circuit_state_body,
    circuit_state_status,
    circuit_states_path,
    condition_patch,
    evicted_patch,
    eviction_body,
    node_patch,
    policy_status_patch,
    policy_status_path,
)

__all__ = ("Applier", "ApplyResult")

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ApplyResult:
    writes: int = 0
    failures: int = 0
    conflicts: int = 0
    evicted: list[str] = field(default_factory=list)
    eviction_blocked: list[str] = field(default_factory=list)
    # Granted evictions whose pod did not take our mark: to be marked on the next pass.
    unmarked: list[Eviction] = field(default_factory=list)
    actions: dict[Action, int] = field(default_factory=dict)

    def count(self, action: Action) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1


class Applier:
    """Turns Plans into API requests, at most ``concurrency`` at a time."""

    def __init__(
        self,
        api: KubeApi,
        view: ClusterView,
        recorder: EventRecorder,
        *,
        concurrency: int = 16,
        on_unready: Callable[[float], None] | None = None,
    ) -> None:
        self.api = api
        self.view = view
        self.recorder = recorder
        self.on_unready = on_unready
        self._limit = asyncio.Semaphore(concurrency)

    async def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        jobs: list[Awaitable[None]] = []
        jobs += [self._guard(result, "condition", self._condition, w) for w in plan.conditions]
        jobs += [
            self._guard(result, "circuitstate", self._circuit_state, w) for w in plan.circuit_states
        ]
        jobs += [
            self._guard(result, "circuitstate_delete", self._delete_state, d)
            for d in plan.circuit_state_deletes
        ]
        jobs += [self._guard(result, "node", self._node, n) for n in plan.nodes]
        jobs += [self._guard(result, "evict", self._evict, e) for e in plan.evictions]
        if plan.policy_status is not None:
            write = plan.policy_status
            jobs.append(self._guard(result, "policy_status", self._policy_status, write))
        await asyncio.gather(*jobs)
        return result

    def post(self, events: tuple[EventIntent, ...]) -> None:
        for event in events:
            self.recorder.post(event)

    async def _guard(
        self,
        result: ApplyResult,
        what: str,
        fn: Callable[[T, ApplyResult], Awaitable[None]],
        item: T,
    ) -> None:
        async with self._limit:
            try:
                await fn(item, result)
            except ApiError as error:
                if error.status == 409:
                    result.conflicts += 1
                    logger.info("%s: conflict, will decide again: %s", what, error.message)
                else:
                    result.failures += 1
                    logger.warning("%s failed: %s", what, error)
            except Exception:
                result.failures += 1
                logger.exception("%s failed", what)

    async def _condition(self, write: ConditionWrite, result: ApplyResult) -> None:
        body = condition_patch(write)
        answer = await self.api.request(
            "PATCH",
            f"/api/v1/namespaces/{write.namespace}/pods/{write.pod}/status",
            body=body,
            content_type=STRATEGIC_MERGE_PATCH,
        )
        result.writes += 1
        result.count(write.action)
        self.view.pods.observe(answer, ours=True)
        if write.marks_unready and self.on_unready is not None:
            opened = parse_time(write.opened_at)
            if opened is not None:
                self.on_unready(max(time.time() - opened, 0.0))
        self.post(write.events)

    async def _circuit_state(self, write: CircuitStateWrite, result: ApplyResult) -> None:
        base = circuit_states_path(write.namespace)
        observed = write.observed
        if write.create:
            body = circuit_state_body(write)
            try:
                created = await self.api.request("POST", base, body=body)
            except ApiError as error:
                if error.status != 409:
                    raise
                created = await self.api.request("GET", f"{base}/{write.name}")
                observed = dict(created.get("status") or {})
            else:
                result.writes += 1
            self.view.circuit_states.observe(created)
        patch = circuit_state_status(write, observed)
        answer = await self.api.request(
            "PATCH", f"{base}/{write.name}/status", body=patch, content_type=MERGE_PATCH
        )
        result.writes += 1
        self.view.circuit_states.observe(answer, ours=True)
        self.post(write.events)

    async def _delete_state(self, delete: CircuitStateDelete, result: ApplyResult) -> None:
        try:
            await self.api.request(
                "DELETE", f"{circuit_states_path(delete.namespace)}/{delete.name}"
            )
            result.writes += 1
        except ApiError as error:
            if error.status != 404:
                raise
        self.view.circuit_states.forget(delete.namespace, delete.name)

    async def _node(self, change: NodeChange, result: ApplyResult) -> None:
        body = node_patch(change)
        answer = await self.api.request(
            "PATCH",
            f"/api/v1/nodes/{change.node}",
            body=body,
            content_type=MERGE_PATCH,
            query={"fieldManager": FIELD_MANAGER},
        )
        result.writes += 1
        result.count(change.action)
        self.view.nodes.observe(answer, ours=True)
        self.post(change.events)

    async def _evict(self, eviction: Eviction, result: ApplyResult) -> None:
        """Ask for the eviction, then mark the pod as evicted by us: the mark tells every later
        decision (of any replica, after any restart) that this eviction is no drain. Only one
        the API server granted is marked, so a drain of a pod whose eviction a budget refused
        is still seen as one. A mark refused is tried again (`ApplyResult.unmarked`); until it
        lands the loop knows the eviction as its own; only a crash in between loses that."""
        pod = f"/api/v1/namespaces/{eviction.namespace}/pods/{eviction.pod}"
        try:
            await self.api.request("POST", f"{pod}/eviction", body=eviction_body(eviction))
        except ApiError as error:
            if error.status == 429:  # a PodDisruptionBudget forbids it now
                result.eviction_blocked.append(eviction.pod)
                return
            if error.status == 404:
                return
            raise
        result.writes += 1
        result.count(eviction.action)
        result.evicted.append(eviction.pod)
        self.post(eviction.events)
        if not await self.mark_evicted(eviction):
            result.unmarked.append(eviction)
        else:
            result.writes += 1

    async def mark_evicted(self, eviction: Eviction) -> bool:
        """Mark a pod whose eviction was granted as evicted by us; False (logged) if the API
        server did not take the mark, for the caller to try again. A pod already gone needs
        none: nothing is left of it to mistake for a drain."""
        path = f"/api/v1/namespaces/{eviction.namespace}/pods/{eviction.pod}/status"
        try:
            marked = await self.api.request(
                "PATCH",
                path,
                body=evicted_patch(eviction, time.time()),
                content_type=STRATEGIC_MERGE_PATCH,
            )
        except ApiError as error:
            if error.status == 404:
                return True
            logger.warning("pod %s: could not mark it evicted: %s", eviction.pod, error)
            return False
        self.view.pods.observe(marked, ours=True)
        return True

    async def _policy_status(self, write: PolicyStatusWrite, result: ApplyResult) -> None:
        answer = await self.api.request(
            "PATCH",
            policy_status_path(write.namespace, write.name),
            body=policy_status_patch(write),
            content_type=MERGE_PATCH,
        )
        result.writes += 1
        self.view.policies.observe(answer, ours=True)
