"""What the decide layer returns: intended changes, as plain data the act layer applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..model import Condition, NodeView, PodView, PolicyView, Taint
from ..names import GROUP, VERSION

__all__ = (
    "Action",
    "Cause",
    "CircuitStateDelete",
    "CircuitStateWrite",
    "ConditionWrite",
    "EventIntent",
    "Eviction",
    "NodeAction",
    "NodeChange",
    "ObjectRef",
    "Plan",
    "PolicyStatusWrite",
    "node_event",
    "node_ref",
    "pod_ref",
    "policy_ref",
)

# What a NodeChange does to a node: cordon it, undo our cordon, let someone else's be (release),
# or remove the release marks once they forgive nothing (forget).
NodeAction = Literal["cordon", "uncordon", "release", "forget"]
# The changes the operator counts (the actions metric) and may hold back.
Action = Literal["mark_unready", "mark_ready", "evict"] | NodeAction
# Why an action was held back; "budget" (a PodDisruptionBudget refused an eviction) is known
# only once the plan is applied.
Cause = Literal["paused", "storm", "cap", "dry_run", "budget"]


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"


def pod_ref(pod: PodView) -> ObjectRef:
    return ObjectRef("Pod", pod.name, pod.namespace, pod.uid)


def node_ref(node: NodeView) -> ObjectRef:
    return ObjectRef("Node", node.name, "", node.uid)


def policy_ref(policy: PolicyView) -> ObjectRef:
    return ObjectRef(
        "CircuitPolicy", policy.name, policy.namespace, policy.uid, f"{GROUP}/{VERSION}"
    )


@dataclass(frozen=True)
class EventIntent:
    ref: ObjectRef
    reason: str
    message: str
    type: str = "Normal"


_NODE_EVENTS: dict[str, tuple[str, str]] = {
    "cordon": ("NodeCordoned", "Warning"),
    "uncordon": ("NodeUncordoned", "Normal"),
    # Someone else took the node over: our taint and marks go, the cordon stays theirs.
    "release": ("NodeReleased", "Normal"),
}


def node_event(node: NodeView, action: NodeAction, message: str) -> EventIntent:
    """The Event a node change posts: its reason says what happened to the node."""
    reason, kind = _NODE_EVENTS[action]
    return EventIntent(node_ref(node), reason, message, kind)


@dataclass(frozen=True)
class ConditionWrite:
    """Set the readiness-gate condition of a pod. ``first``: the pod has none yet, so a first
    True changes nothing a Service sees (and without it the gate keeps the pod unready)."""

    namespace: str
    pod: str
    condition: Condition
    marks_unready: bool = False
    opened_at: str | None = None
    events: tuple[EventIntent, ...] = ()
    first: bool = False

    @property
    def action(self) -> Action:
        return "mark_unready" if self.marks_unready else "mark_ready"

    @property
    def first_true(self) -> bool:
        return self.first and self.condition.status == "True"


@dataclass(frozen=True)
class CircuitStateWrite:
    """Create (``create``) or update the status of the CircuitState named after a pod."""

    namespace: str
    name: str
    pod_uid: str
    policy: str
    status: dict[str, Any]
    create: bool
    observed: dict[str, Any] = field(default_factory=dict)
    events: tuple[EventIntent, ...] = ()


@dataclass(frozen=True)
class CircuitStateDelete:
    namespace: str
    name: str


@dataclass(frozen=True)
class NodeChange:
    """A node patch: cordon, release, undo or forget. ``resource_version`` makes it a
    compare-and-set, so a concurrent change by someone else fails the patch instead of being
    overwritten."""

    node: str
    action: NodeAction
    unschedulable: bool | None
    taints: tuple[Taint, ...] | None
    annotations: dict[str, str | None]
    resource_version: str
    reason: str
    events: tuple[EventIntent, ...] = ()


@dataclass(frozen=True)
class Eviction:
    """Evict a pod. ``unready``: it is unready already, so evicting it takes no slot of the
    unready-pods cap (a pod that is still ready does)."""

    namespace: str
    pod: str
    node: str
    uid: str = ""
    events: tuple[EventIntent, ...] = ()
    unready: bool = False

    @property
    def action(self) -> Action:
        return "evict"


@dataclass(frozen=True)
class PolicyStatusWrite:
    namespace: str
    name: str
    status: dict[str, Any]
    observed: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything one reconciliation of a policy intends to change, plus what it held back.
    Events attached to a write are posted only once the write succeeded."""

    circuit_states: list[CircuitStateWrite] = field(default_factory=list)
    circuit_state_deletes: list[CircuitStateDelete] = field(default_factory=list)
    conditions: list[ConditionWrite] = field(default_factory=list)
    nodes: list[NodeChange] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
    events: list[EventIntent] = field(default_factory=list)
    policy_status: PolicyStatusWrite | None = None
    suppressed: dict[tuple[Action, Cause], int] = field(default_factory=dict)

    def suppress(self, action: Action, cause: Cause, count: int = 1) -> None:
        key = (action, cause)
        self.suppressed[key] = self.suppressed.get(key, 0) + count
