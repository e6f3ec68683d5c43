"""kopf handlers, kept thin: they feed the cluster view and start the per-policy loops.

Pods are only ever watched (event handlers keep no progress on them: kopf cannot store progress
in a Pod's status, nolar/kopf#685). Policies get a daemon (the reconciliation loop) and a
deletion handler behind circuitgate's own finalizer; kopf keeps its progress for them in
annotations, since the CRD's status schema has no room for kopf's.

Run with ``python -m circuitgate_operator`` or ``kopf run -m circuitgate_operator.handlers``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .config import OperatorConfig
from .names import GROUP, VERSION
from .runtime import Operator
from .webhook import WebhookSetup, inject_readiness_gate

__all__ = ("CONFIG",)

logger = logging.getLogger(__name__)

CONFIG = OperatorConfig.from_env()
POLICIES = (GROUP, VERSION, "circuitpolicies")
STATES = (GROUP, VERSION, "circuitstates")


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = CONFIG.peering_lifetime
    if not settings.peering.mandatory:
        settings.peering.name = CONFIG.peering_name  # used only if that peering object exists
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    operator = Operator(CONFIG)
    await operator.start()
    memo.operator = operator
    if CONFIG.webhook:
        memo.webhook = WebhookSetup(CONFIG, operator)
        settings.admission.server = memo.webhook.server()
        settings.admission.managed = None


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    webhook = memo.get("webhook")
    if webhook is not None:
        await webhook.remove()
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        await operator.stop()


@kopf.on.event(*POLICIES)
async def policy_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.observe("policies", event.get("type"), event["object"])
    webhook = memo.get("webhook")
    if webhook is not None:
        webhook.policies_changed()


@kopf.daemon(*POLICIES, cancellation_timeout=10.0)
async def policy_loop(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.run_policy(namespace or "", name)


@kopf.on.delete(*POLICIES)
async def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Behind the finalizer: undo what the policy did before it goes."""
    if not await memo.operator.cleanup_policy(body):
        raise kopf.TemporaryError("cleanup not complete; retrying", delay=2)


@kopf.on.event("", "v1", "pods")
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.observe("pods", event.get("type"), event["object"])


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.observe("nodes", event.get("type"), event["object"])


@kopf.on.event(*STATES)
async def circuit_state_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.observe("circuit_states", event.get("type"), event["object"])


if CONFIG.webhook:
    kopf.on.mutate("", "v1", "pods", id="inject-readiness-gate", operation="CREATE")(
        inject_readiness_gate
    )
