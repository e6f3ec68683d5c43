"""Undoing what a deleted policy did, behind its finalizer: readiness back to True, its cordons
and taints off, its CircuitStates removed. Never held back by a pause or a dry run: the
policy that asked for them is going."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..clock import rfc3339
from ..model import CircuitStateView, NodeView, PodView, PolicyView
from .intents import CircuitStateDelete, EventIntent, Plan, node_ref
from .nodes import CORDONED_BY, decide_node_action
from .readiness import restore

__all__ = ("plan_cleanup",)


def plan_cleanup(
    policy: PolicyView,
    *,
    pods: Mapping[str, PodView],
    circuit_states: Mapping[str, CircuitStateView],
    nodes: Mapping[str, NodeView],
    now: float,
) -> Plan:
    """Everything to undo for a deleted policy, from what the cluster shows now."""
    plan = Plan()
    stamp = rfc3339(now)
    why = f"policy {policy.name} was deleted"
    ours = {name for name, s in circuit_states.items() if s.policy == policy.name}
    for pod in pods.values():
        if pod.name in ours or policy.spec.selector.matches(pod.labels):
            write = restore(pod, stamp, why)
            if write is not None:
                plan.conditions.append(write)
    for name in sorted(ours):
        plan.circuit_state_deletes.append(CircuitStateDelete(policy.namespace, name))
    disabled = dataclasses.replace(policy.spec.nodes, enabled=False)
    for node in nodes.values():
        if node.annotations.get(CORDONED_BY) != policy.key:
            continue
        decision = decide_node_action(node, policy=policy.key, spec=disabled, trips=(), now=now)
        if decision.change is not None:
            message = f"policy {policy.key} was deleted: {decision.reason}"
            event = EventIntent(node_ref(node), "NodeUncordoned", message)
            plan.nodes.append(dataclasses.replace(decision.change, events=(event,)))
    return plan
