"""Whether a new pod should get the readiness gate: exactly one live policy of its namespace
selects it and marks pods unready."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..model import PolicyView
from ..names import CONDITION_TYPE

__all__ = ("readiness_gates_with_ours",)


def readiness_gates_with_ours(
    pod: Mapping[str, Any], namespace: str, policies: Iterable[PolicyView]
) -> list[dict[str, Any]] | None:
    """The pod's readinessGates with circuitgate's added, or None to leave the pod alone.

    Not for pods two policies select: none of them would watch it (overlaps are reported,
    not guessed), and a gate nobody sets keeps a pod unready for ever.
    """
    spec = pod.get("spec") or {}
    gates = [dict(g) for g in spec.get("readinessGates") or ()]
    if any(g.get("conditionType") == CONDITION_TYPE for g in gates):
        return None
    labels = (pod.get("metadata") or {}).get("labels") or {}
    selecting = [
        p
        for p in policies
        if p.namespace == namespace and not p.deleting and p.spec.selector.matches(labels)
    ]
    if len(selecting) != 1 or not selecting[0].spec.readiness_enabled:
        return None
    return [*gates, {"conditionType": CONDITION_TYPE}]
