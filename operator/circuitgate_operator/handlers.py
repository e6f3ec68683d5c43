"""kopf handlers, kept thin: they feed the cluster view and start the per-policy loops.

Pods are only ever watched (event handlers keep no progress on them: kopf cannot store progress
in a Pod's status, nolar/kopf#685). Policies get a daemon (the reconciliation loop) and a
deletion handler behind circuitgate's own finalizer; kopf keeps its progress for them in
annotations, since the CRD's status schema has no room for kopf's. Every handler is always
registered; the webhook's does nothing while the webhook is off.

Run with ``python -m circuitgate_operator`` or ``kopf run -m circuitgate_operator.handlers``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import kopf

from .act.listing import PAGE_SIZE
from .config import OperatorConfig
from .decide.injection import readiness_gates_with_ours
from .lifecycle import Operator, Store
from .names import GROUP, VERSION
from .reconcile import clean_up_policy
from .webhook import HANDLER_ID, WebhookSetup

__all__ = ()

logger = logging.getLogger(__name__)

POLICIES = (GROUP, VERSION, "circuitpolicies")
STATES = (GROUP, VERSION, "circuitstates")


def _operator(memo: kopf.Memo) -> Operator:
    operator: Operator = memo.operator
    return operator


def _webhook(memo: kopf.Memo) -> WebhookSetup | None:
    webhook: WebhookSetup | None = memo.get("webhook")
    return webhook


async def _no_admission_server(_: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
    """With the webhook off: kopf runs no admission handler without a server, so a server
    that never serves (and never configures the API server to call it)."""
    await asyncio.Event().wait()
    yield {}  # never reached: the yield makes this the async generator kopf expects


class PolicyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds a diff base (a deep copy of the body) on every event of every resource it
    watches, whatever the handlers; only the policies' handlers use one. Pods, nodes and
    CircuitStates get an empty one: at ten thousand pods, those copies were half of the
    operator's start."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if body.get("kind") not in (None, "CircuitPolicy"):
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """The configuration comes from ``main`` in the memo; under plain ``kopf run``, from the
    environment."""
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = PolicyDiffBase(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = config.peering_lifetime
    if not settings.peering.mandatory:
        settings.peering.name = config.peering_name  # used only if that peering object exists
    settings.watching.server_timeout = 300
    # kopf's own listings page by page too (it lists in one answer otherwise: ten thousand
    # pods in one body of hundreds of megabytes once parsed).
    settings.watching.chunk_size = PAGE_SIZE
    settings.networking.request_timeout = 60
    operator = Operator(config, peered=not settings.peering.standalone)
    await operator.start()
    memo.operator = operator
    memo.webhook = (
        await WebhookSetup.start(config, operator, standalone=settings.peering.standalone)
        if config.webhook
        else None
    )
    settings.admission.server = memo.webhook.server() if memo.webhook else _no_admission_server
    settings.admission.managed = None  # we keep the configuration ourselves (webhook.py)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    webhook = _webhook(memo)
    if webhook is not None:
        await webhook.remove()
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        await operator.stop()


def _observe(memo: kopf.Memo, store: Store, event: kopf.RawEvent) -> None:
    _operator(memo).observe(store, event.get("type"), event["object"])


@kopf.on.event(*POLICIES)
async def policy_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, "policies", event)
    webhook = _webhook(memo)
    if webhook is not None:
        webhook.policies_changed()


@kopf.daemon(*POLICIES, cancellation_timeout=10.0)
async def policy_loop(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await _operator(memo).run_policy(namespace or "", name)


@kopf.on.delete(*POLICIES)
async def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Behind the finalizer: undo what the policy did before it goes."""
    if not await clean_up_policy(_operator(memo), body):
        raise kopf.TemporaryError("cleanup not complete; retrying", delay=2)


@kopf.on.event("", "v1", "pods")
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, "pods", event)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, "nodes", event)


@kopf.on.event(*STATES)
async def circuit_state_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, "circuit_states", event)


@kopf.on.mutate("", "v1", "pods", id=HANDLER_ID, operation="CREATE")
async def inject_readiness_gate(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Add the readiness gate to a new pod that exactly one policy selects."""
    webhook = _webhook(memo)
    if webhook is None:
        return
    namespace = body.get("metadata", {}).get("namespace") or ""
    gates = readiness_gates_with_ours(body, namespace, await webhook.policies(namespace))
    if gates is not None:
        patch.setdefault("spec", {})["readinessGates"] = gates
