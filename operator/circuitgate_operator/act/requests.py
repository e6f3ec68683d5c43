"""The API request each intended write becomes (its path and body), as plain functions, so
what the operator sends is tested without an API server."""

from __future__ import annotations

from typing import Any

from ..clock import rfc3339
from ..decide.circuit_state import status_patch
from ..decide.intents import (
    CircuitStateWrite,
    ConditionWrite,
    Eviction,
    NodeChange,
    PolicyStatusWrite,
)
from ..model import POLICY_LABEL
from ..names import CONDITION_TYPE, EVICTED_CONDITION_TYPE, GROUP, VERSION, label_value

__all__ = (
    "circuit_state_body",
    "circuit_state_status",
    "circuit_states_path",
    "condition_patch",
    "evicted_patch",
    "eviction_body",
    "node_patch",
    "policy_status_patch",
    "policy_status_path",
)

_CUSTOM = f"/apis/{GROUP}/{VERSION}/namespaces"


def circuit_states_path(namespace: str) -> str:
    return f"{_CUSTOM}/{namespace}/circuitstates"


def policy_status_path(namespace: str, name: str) -> str:
    return f"{_CUSTOM}/{namespace}/circuitpolicies/{name}/status"


def condition_patch(write: ConditionWrite) -> dict[str, Any]:
    """A strategic merge patch of the pod's status: conditions merge by type, so only ours
    changes."""
    condition = write.condition
    entry = {
        "type": CONDITION_TYPE,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": condition.last_transition_time,
        "lastProbeTime": None,
    }
    return {"status": {"conditions": [entry]}}


def evicted_patch(eviction: Eviction, now: float) -> dict[str, Any]:
    """The mark set on a pod once its eviction was granted (`EVICTED_CONDITION_TYPE`)."""
    entry = {
        "type": EVICTED_CONDITION_TYPE,
        "status": "True",
        "reason": "BreakerTripped",
        "message": f"circuitgate evicted this pod: its breaker tripped on node {eviction.node}",
        "lastTransitionTime": rfc3339(now),
        "lastProbeTime": None,
    }
    return {"status": {"conditions": [entry]}}


def circuit_state_body(write: CircuitStateWrite) -> dict[str, Any]:
    """A new CircuitState, labelled with its policy and owned by its pod, so the garbage
    collector removes it with the pod (without blocking the pod's deletion)."""
    owner = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": write.name,
        "uid": write.pod_uid,
        "blockOwnerDeletion": False,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CircuitState",
        "metadata": {
            "name": write.name,
            "namespace": write.namespace,
            "labels": {POLICY_LABEL: label_value(write.policy)},
            "ownerReferences": [owner],
        },
        "spec": {},
    }


def circuit_state_status(write: CircuitStateWrite, observed: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from the status observed to the one wanted."""
    return {"status": status_patch(write.status, observed)}


def policy_status_patch(write: PolicyStatusWrite) -> dict[str, Any]:
    return {"status": status_patch(write.status, write.observed)}


def node_patch(change: NodeChange) -> dict[str, Any]:
    """A merge patch of the node; with its resourceVersion it is a compare-and-set."""
    metadata: dict[str, Any] = {"annotations": change.annotations}
    if change.resource_version:
        metadata["resourceVersion"] = change.resource_version
    body: dict[str, Any] = {"metadata": metadata}
    spec: dict[str, Any] = {}
    if change.unschedulable is not None:
        spec["unschedulable"] = change.unschedulable
    if change.taints is not None:
        spec["taints"] = [taint.to_json() for taint in change.taints]
    if spec:
        body["spec"] = spec
    return body


def eviction_body(eviction: Eviction) -> dict[str, Any]:
    """An Eviction (which honours PodDisruptionBudgets), for that very pod (its uid)."""
    body: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": eviction.pod, "namespace": eviction.namespace},
    }
    if eviction.uid:
        body["deleteOptions"] = {"preconditions": {"uid": eviction.uid}}
    return body
