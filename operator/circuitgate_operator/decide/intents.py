"""What the decide layer returns: intended changes, as plain data the act layer applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import Condition, Taint

__all__ = (
    "CircuitStateDelete",
    "CircuitStateWrite",
    "ConditionWrite",
    "EventIntent",
    "Eviction",
    "NodeChange",
    "ObjectRef",
    "Plan",
    "PolicyStatusWrite",
)


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"


@dataclass(frozen=True)
class EventIntent:
    ref: ObjectRef
    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class ConditionWrite:
    """Set the readiness-gate condition of a pod."""

    namespace: str
    pod: str
    condition: Condition
    marks_unready: bool = False
    opened_at: str | None = None
    events: tuple[EventIntent, ...] = ()


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
    """A node patch: cordon, release or undo. ``resource_version`` makes it a compare-and-set,
    so a concurrent change by someone else fails the patch instead of being overwritten."""

    node: str
    action: str  # "cordon", "uncordon", "release"
    unschedulable: bool | None
    taints: tuple[Taint, ...] | None
    annotations: dict[str, str | None]
    resource_version: str
    reason: str
    events: tuple[EventIntent, ...] = ()


@dataclass(frozen=True)
class Eviction:
    namespace: str
    pod: str
    node: str
    uid: str = ""


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
    suppressed: dict[tuple[str, str], int] = field(default_factory=dict)

    def suppress(self, action: str, cause: str, count: int = 1) -> None:
        key = (action, cause)
        self.suppressed[key] = self.suppressed.get(key, 0) + count
