"""Node remediation for one policy: the node changes its trips call for, worst node first, and
the evictions of the pods that tripped on a node it holds cordoned.

Planned as if nothing held them back; `restraint` then applies the pause, the storm brake,
the cordoned-nodes cap and a dry run to them, once for the whole Plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..model import NodeView, PodView
from .caps import Cap
from .intents import EventIntent, Eviction, Plan, node_event, pod_ref
from .nodes import (
    CORDONED_BY,
    RELEASED_BY,
    NodeDecision,
    decide_node_action,
    evictions_on,
    recent_trips,
)
from .observation import PolicyObservation

__all__ = ("cordon_cap", "plan_remediation")


def cordon_cap(obs: PolicyObservation, matched: Sequence[PodView]) -> Cap:
    """The cordoned-nodes cap: a percentage of the nodes the watched pods run on, counting the
    nodes circuitgate holds cordoned now among them (for any policy: their pods lose those
    nodes just the same) and those this policy holds anywhere, and the cordons of either kind
    still on their way."""
    key = obs.policy.key
    ran_on = {pod.node_name for pod in matched if pod.node_name}
    held = {
        n.name
        for n in obs.nodes.values()
        if n.unschedulable
        and (owner := n.annotations.get(CORDONED_BY))
        and (owner == key or n.name in ran_on)
    }
    held |= {
        node for node, owners in obs.cordons_in_flight.items() if key in owners or node in ran_on
    }
    total = len(ran_on)
    return Cap(obs.policy.spec.safety.max_cordoned_nodes, total, len(held))


def plan_remediation(plan: Plan, obs: PolicyObservation, matched: Sequence[PodView]) -> None:
    """Plan a change for each node the policy's pods run on, tripped on or holds; cordons come
    first, most recent trips first, the order in which a cap lets them through."""
    policy, spec = obs.policy, obs.policy.spec
    names = {pod.node_name for pod in matched if pod.node_name} | set(obs.trips)
    names |= {
        n.name
        for n in obs.nodes.values()
        if policy.key in (n.annotations.get(CORDONED_BY), n.annotations.get(RELEASED_BY))
    }
    on_node: dict[str, list[PodView]] = {}  # grouped once: nodes x pods is 200 000 at 10 000
    for pod in obs.pods.values():
        if pod.name not in obs.evicted_unmarked:
            on_node.setdefault(pod.node_name, []).append(pod)
    decisions: list[tuple[NodeView, NodeDecision, int]] = []
    for name in sorted(names):
        node = obs.nodes.get(name)
        if node is None:
            continue
        trips = obs.trips.get(name, ())
        decision = decide_node_action(
            node,
            policy=policy.key,
            spec=spec.nodes,
            trips=trips,
            now=obs.now,
            evicted=evictions_on(name, on_node.get(name, ())),
        )
        count = len(recent_trips(node, trips, spec.nodes.window, obs.now))
        decisions.append((node, decision, count))
    decisions.sort(key=lambda d: (d[1].action != "cordon", -d[2], d[0].name))
    for node, decision, _ in decisions:
        if decision.action == "hold":
            _plan_evictions(plan, obs, node, matched)
        elif decision.action == "forget" and decision.change is not None:
            plan.nodes.append(decision.change)  # our own marks only: no news for anyone
        elif decision.change is not None:
            message = f"policy {policy.key}: {decision.reason}"
            event = node_event(node, decision.change.action, message)
            plan.nodes.append(dataclasses.replace(decision.change, events=(event,)))


def _plan_evictions(
    plan: Plan, obs: PolicyObservation, node: NodeView, matched: Sequence[PodView]
) -> None:
    """Evict the pods that tripped on a node this policy holds cordoned, if asked to."""
    spec = obs.policy.spec
    if not spec.nodes.evict_tripped_pods:
        return
    trips = recent_trips(node, obs.trips.get(node.name, ()), spec.nodes.window, obs.now)
    tripped = {trip.pod for trip in trips}
    for pod in matched:
        if pod.node_name != node.name or pod.name not in tripped:
            continue
        if pod.name in obs.evicted_recently:
            continue
        message = f"policy {obs.policy.key}: it tripped on node {node.name}, now cordoned"
        event = EventIntent(pod_ref(pod), "PodEvicted", message)
        condition = pod.gate_condition
        unready = condition is not None and condition.status == "False"
        plan.evictions.append(
            Eviction(pod.namespace, pod.name, node.name, pod.uid, (event,), unready=unready)
        )
