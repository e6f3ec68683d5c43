"""The handlers are registered whatever the configuration; the webhook's does nothing while
the webhook is off."""

from __future__ import annotations

import asyncio

import kopf

from circuitgate_operator import handlers
from circuitgate_operator.config import OperatorConfig
from circuitgate_operator.lifecycle import Operator
from circuitgate_operator.webhook import HANDLER_ID


def test_the_readiness_gate_handler_is_always_registered() -> None:
    ids = [h.id for h in kopf.get_default_registry()._webhooks.get_all_handlers()]
    assert HANDLER_ID in ids


def test_with_the_webhook_off_it_leaves_every_pod_alone() -> None:
    operator = Operator(OperatorConfig())
    operator.observe(
        "policies",
        "ADDED",
        {
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "worker"}}, "endpoint": {"port": 1}},
        },
    )
    pod = kopf.Body({"metadata": {"namespace": "ns", "labels": {"app": "worker"}}, "spec": {}})
    patch = kopf.Patch()
    off = kopf.Memo(operator=operator, webhook=None)
    asyncio.run(handlers.inject_readiness_gate(body=pod, patch=patch, memo=off))
    assert patch == {}


def test_only_policies_get_a_diff_base() -> None:
    """kopf would deep-copy every pod on every event for a diff no pod handler reads."""
    storage = handlers.PolicyDiffBase(prefix="circuitgate.io", key="last-handled-configuration")
    spec = {"selector": {"matchLabels": {"app": "worker"}}}
    policy = {"kind": "CircuitPolicy", "metadata": {"name": "p"}, "spec": spec}
    pod = {"kind": "Pod", "metadata": {"name": "w0"}, "spec": {"nodeName": "n1"}}
    assert storage.build(body=kopf.Body(policy))["spec"] == spec
    assert storage.build(body=kopf.Body(pod)) == {}
