"""Small builders of observed objects for the decide layer's unit tests."""

from __future__ import annotations

from typing import Any

from circuitgate_operator.contract import Reading
from circuitgate_operator.model import (
    CircuitStateView,
    Condition,
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
    )


def reading(
    p: PodView, state: str = "closed", *, trips: int = 0, opened_at: str | None = None
) -> Reading:
    url = f"http://{p.pod_ip}:8000/circuit"
    if state == "unknown":
        return Reading(url=url, state="unknown", reachable=False, reason="connection refused")
    opened = (
        opened_at
        if opened_at is not None
        else ("2027-01-15T08:00:00Z" if state == "open" else None)
    )
    return Reading(
        url=url,
        state=state,
        reachable=True,
        breaker="default",
        failures=5 if state == "open" else 0,
        trips=trips,
        opened_at=opened,
        may_close_at="2027-01-15T08:01:00Z" if state == "open" else None,
        sequence=7,
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
