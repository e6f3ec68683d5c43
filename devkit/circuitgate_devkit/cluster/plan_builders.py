"""Small builders of observed objects for the decide layer: its unit tests and its bench."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from circuitgate_operator.contract import BreakerState, CallEvidence, Reading
from circuitgate_operator.decide.intents import Plan
from circuitgate_operator.decide.nodes import Trip
from circuitgate_operator.decide.observation import PolicyObservation
from circuitgate_operator.model import (
    CircuitStateView,
    Condition,
    ContainerView,
    NodeView,
    PodView,
    PolicyView,
    parse_policy,
)
from circuitgate_operator.names import CONDITION_TYPE

NOW = 1_800_000_000.0


def policy(name: str = "pol", namespace: str = "ns", **spec: Any) -> PolicyView:
    body_spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "worker"}},
        "endpoint": {"port": 8000},
    }
    annotations = spec.pop("annotations", {})
    body_spec.update(spec)
    return parse_policy(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "generation": 1,
                "annotations": annotations,
            },
            "spec": body_spec,
        }
    )


def pod(
    name: str,
    *,
    ip: str = "",
    node: str = "node-a",
    gated: bool = True,
    condition: str | None = None,
    reason: str = "",
    labels: dict[str, str] | None = None,
    namespace: str = "ns",
    started_at: float | None = None,
) -> PodView:
    conditions = {}
    if condition is not None:
        conditions[CONDITION_TYPE] = Condition(CONDITION_TYPE, condition, reason, "", "t0")
    return PodView(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        labels=labels if labels is not None else {"app": "worker"},
        node_name=node,
        pod_ip=ip or f"10.0.0.{sum(map(ord, name)) % 200 + 1}",
        phase="Running",
        readiness_gates=(CONDITION_TYPE,) if gated else (),
        conditions=conditions,
        containers=(ContainerView("worker", frozenset({8000}), started_at),),
    )


def reading(
    p: PodView,
    state: str = "closed",
    *,
    trips: int = 0,
    opened_at: str | None = None,
    evidence: tuple[CallEvidence, ...] = (),
) -> Reading:
    url = f"http://{p.pod_ip}:8000/circuit"
    if state == "unknown":
        return Reading(
            url=url, state=BreakerState.UNKNOWN, reachable=False, reason="connection refused"
        )
    opened = (
        opened_at
        if opened_at is not None
        else ("2027-01-15T08:00:00Z" if state == "open" else None)
    )
    return Reading(
        url=url,
        state=BreakerState(state),
        reachable=True,
        breaker="default",
        failures=5 if state == "open" else 0,
        trips=trips,
        opened_at=opened,
        may_close_at="2027-01-15T08:01:00Z" if state == "open" else None,
        sequence=7,
        evidence=evidence,
    )


def node(name: str = "node-a", **fields: Any) -> NodeView:
    return NodeView(name=name, uid=f"uid-{name}", resource_version="10", **fields)


def circuit_state(p: PodView, policy_name: str = "pol", **status: Any) -> CircuitStateView:
    return CircuitStateView(
        namespace=p.namespace,
        name=p.name,
        policy=policy_name,
        owner_uid=p.uid,
        status=status,
    )


def observe(
    pol: PolicyView,
    pods: Sequence[PodView],
    readings: dict[str, Reading],
    *,
    states: dict[str, CircuitStateView] | None = None,
    nodes: Sequence[NodeView] = (),
    trips: dict[str, list[Trip]] | None = None,
    now: float = NOW,
) -> PolicyObservation:
    return PolicyObservation(
        policy=pol,
        selected=[p for p in pods if pol.spec.selector.matches(p.labels)],
        pods={p.name: p for p in pods},
        readings=readings,
        circuit_states=states or {},
        nodes={n.name: n for n in nodes},
        trips=trips or {},
        now=now,
    )


def settle(obs: PolicyObservation, plan: Plan) -> PolicyObservation:
    """The observation after the plan's writes landed, as the watch would show them."""
    pods = dict(obs.pods)
    for write in plan.conditions:
        p = pods[write.pod]
        pods[p.name] = dataclasses.replace(
            p, conditions={**p.conditions, CONDITION_TYPE: write.condition}
        )
    states = dict(obs.circuit_states)
    for w in plan.circuit_states:
        states[w.name] = CircuitStateView(w.namespace, w.name, w.policy, w.pod_uid, w.status)
    for d in plan.circuit_state_deletes:
        states.pop(d.name, None)
    pol = obs.policy
    if plan.policy_status is not None:
        pol = dataclasses.replace(pol, status=plan.policy_status.status)
    return dataclasses.replace(
        obs,
        policy=pol,
        selected=[pods[p.name] for p in obs.selected],
        pods=pods,
        circuit_states=states,
    )
