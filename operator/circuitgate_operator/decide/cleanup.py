"""Undoing what a deleted policy did, behind its finalizer: readiness back to True, its cordons
and taints off (and the marks of its releases), its CircuitStates removed. Never held back by
a pause or a dry run: the policy that asked for them is going."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ..clock import rfc3339
from ..model import CircuitStateView, NodeView, PodView, PolicyView
from .intents import CircuitStateDelete, Plan, node_event
from .nodes import (
    CORDONED_BY,
    RELEASE_MARKS,
    RELEASED_BY,
    decide_node_action,
    evictions_on,
    forget_release,
)
from .readiness import restore

__all__ = ("plan_cleanup",)


def plan_cleanup(
    policy: PolicyView,
    *,
    pods: Mapping[str, PodView],
    circuit_states: Mapping[str, CircuitStateView],
    nodes: Mapping[str, NodeView],
    now: float,
    others: Iterable[PolicyView] = (),
) -> Plan:
    """Everything to undo for a deleted policy, from what the cluster shows now. A pod another
    live policy (``others``) selects is that policy's, never restored here; any other False of
    ours is. A CircuitState goes
    only once its pod needs no restore: it is how a retry finds the pod again."""
    plan = Plan()
    stamp = rfc3339(now)
    why = f"policy {policy.name} was deleted"
    ours = {name for name, s in circuit_states.items() if s.policy == policy.label}
    live = [p for p in others if p.uid != policy.uid and not p.deleting]
    restoring: set[str] = set()
    for pod in pods.values():
        if any(p.spec.selector.matches(pod.labels) for p in live):
            continue
        # Any False of ours that no live policy will give back: this policy's pods, and
        # a pod it marked whose CircuitState was never written (found by the model check).
        write = restore(pod, stamp, why)
        if write is not None:
            plan.conditions.append(write)
            restoring.add(pod.name)
    for name in sorted(ours - restoring):
        plan.circuit_state_deletes.append(CircuitStateDelete(policy.namespace, name))
    disabled = dataclasses.replace(policy.spec.nodes, enabled=False)
    for node in nodes.values():
        if node.annotations.get(RELEASED_BY) == policy.key and not node.annotations.get(
            CORDONED_BY
        ):
            # Its release marks forgive its trips, which go with it.
            plan.nodes.append(forget_release(node, why))
            continue
        if node.annotations.get(CORDONED_BY) != policy.key:
            continue
        # An admin's drain since our cordon makes the node theirs: never uncordoned here.
        evicted = evictions_on(node.name, pods.values())
        decision = decide_node_action(
            node, policy=policy.key, spec=disabled, trips=(), now=now, evicted=evicted
        )
        if decision.change is not None:
            message = f"policy {policy.key} was deleted: {decision.reason}"
            event = node_event(node, decision.change.action, message)
            # No release marks either: nothing of the policy is left for them to forgive.
            marks = {**decision.change.annotations, **dict.fromkeys(RELEASE_MARKS)}
            change = dataclasses.replace(decision.change, annotations=marks, events=(event,))
            plan.nodes.append(change)
    return plan
