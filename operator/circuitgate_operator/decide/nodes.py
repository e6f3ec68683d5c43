"""Whether a node should be cordoned, kept, released or restored, from its trips and its marks.

circuitgate marks what it does with annotations on the node, and only ever undoes what those
annotations say it did: a cordon or taint it did not make is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..clock import parse_time, rfc3339
from ..model import NodeRemediation, NodeView, Taint
from .intents import NodeAction, NodeChange

__all__ = (
    "CORDONED_AT",
    "CORDONED_BY",
    "CORDON_REASON",
    "RELEASED_AT",
    "TAINTED",
    "NodeDecision",
    "Trip",
    "cooldown_deadline",
    "decide_node_action",
    "recent_trips",
)

CORDONED_BY = "circuitgate.io/cordoned-by"
CORDONED_AT = "circuitgate.io/cordoned-at"
CORDON_REASON = "circuitgate.io/cordon-reason"
TAINTED = "circuitgate.io/taint"
# When circuitgate last let go of a node (after its cool-down, or because someone else
# uncordoned it): trips before it are forgiven, so only a new incident cordons it again.
RELEASED_AT = "circuitgate.io/released-at"
_OURS = (CORDONED_BY, CORDONED_AT, CORDON_REASON, TAINTED)


@dataclass(frozen=True)
class Trip:
    """One opening of one pod's breaker, at Unix time ``at``."""

    pod: str
    at: float


@dataclass(frozen=True)
class NodeDecision:
    """``action``: none, hold (ours, cooling down), or the NodeAction of ``change``."""

    action: NodeAction | Literal["none", "hold"]
    reason: str
    change: NodeChange | None = None


def recent_trips(node: NodeView, trips: Sequence[Trip], window: float, now: float) -> list[Trip]:
    """Trips inside the window and after the node was last released by someone else."""
    released = parse_time(node.annotations.get(RELEASED_AT)) or 0.0
    return [trip for trip in trips if trip.at > now - window and trip.at > released]


def decide_node_action(
    node: NodeView,
    *,
    policy: str,
    spec: NodeRemediation,
    trips: Sequence[Trip],
    now: float,
) -> NodeDecision:
    """The node action for one policy's view of one node (before caps, storm and pause)."""
    owner = node.annotations.get(CORDONED_BY)
    if node.excluded:
        return NodeDecision("none", f"node {node.name} is labelled circuitgate.io/exclude=true")
    if owner == policy:
        return _decide_ours(node, spec, trips, now)
    if owner:
        return NodeDecision("none", f"node {node.name} is managed by policy {owner}")
    if not spec.enabled:
        return NodeDecision("none", "node remediation is disabled")
    if node.unschedulable:
        return NodeDecision("none", f"node {node.name} was cordoned by someone else")
    if any(node.labels.get(key) != value for key, value in spec.node_selector):
        return NodeDecision("none", f"node {node.name} does not match the node selector")
    recent = recent_trips(node, trips, spec.window, now)
    pods = {trip.pod for trip in recent}
    if len(recent) < spec.trip_threshold or len(pods) < spec.min_distinct_pods:
        return NodeDecision("none", f"{len(recent)} trips from {len(pods)} pods")
    reason = (
        f"{len(recent)} trips from {len(pods)} pods within {int(spec.window)}s "
        f"(threshold {spec.trip_threshold} from {spec.min_distinct_pods} pods)"
    )
    taints = node.taints
    annotations: dict[str, str | None] = {
        CORDONED_BY: policy,
        CORDONED_AT: rfc3339(now, precise=True),
        CORDON_REASON: reason,
        RELEASED_AT: None,
    }
    if not any(t.key == spec.taint.key and t.effect == spec.taint.effect for t in taints):
        taints = (*taints, spec.taint)
        annotations[TAINTED] = str(spec.taint)
    change = NodeChange(
        node=node.name,
        action="cordon",
        unschedulable=True,
        taints=taints,
        annotations=annotations,
        resource_version=node.resource_version,
        reason=reason,
    )
    return NodeDecision("cordon", reason, change)


def _decide_ours(
    node: NodeView, spec: NodeRemediation, trips: Sequence[Trip], now: float
) -> NodeDecision:
    without_ours = _without_our_taint(node)
    if not node.unschedulable:
        reason = f"node {node.name} was uncordoned by someone else; circuitgate lets it be"
        annotations: dict[str, str | None] = dict.fromkeys(_OURS)
        annotations[RELEASED_AT] = rfc3339(now, precise=True)
        change = NodeChange(
            node.name, "release", None, without_ours, annotations, node.resource_version, reason
        )
        return NodeDecision("release", reason, change)
    cordoned_at = parse_time(node.annotations.get(CORDONED_AT)) or now
    last = max([cordoned_at, *(trip.at for trip in trips)])
    quiet_for = now - last
    if not spec.enabled or quiet_for >= spec.cooldown:
        reason = (
            "node remediation was disabled"
            if not spec.enabled
            else f"no trips for {int(quiet_for)}s (cool-down {int(spec.cooldown)}s)"
        )
        # Marked released too: the trips that led here are dealt with, and must not
        # cordon the node again while they are still inside the window.
        annotations = {**dict.fromkeys(_OURS), RELEASED_AT: rfc3339(now, precise=True)}
        change = NodeChange(
            node.name, "uncordon", False, without_ours, annotations, node.resource_version, reason
        )
        return NodeDecision("uncordon", reason, change)
    return NodeDecision("hold", f"cooling down until {rfc3339(last + spec.cooldown)}")


def _without_our_taint(node: NodeView) -> tuple[Taint, ...] | None:
    """The node's taints minus the one circuitgate added, or None when it added none."""
    added = node.annotations.get(TAINTED)
    if not added:
        return None
    remaining = tuple(t for t in node.taints if str(t) != added)
    return remaining if len(remaining) != len(node.taints) else None


def cooldown_deadline(node: NodeView, spec: NodeRemediation, trips: Sequence[Trip]) -> float | None:
    """When a node this policy holds may be uncordoned, for waking up on time."""
    cordoned_at = parse_time(node.annotations.get(CORDONED_AT))
    if cordoned_at is None:
        return None
    return max([cordoned_at, *(trip.at for trip in trips)]) + spec.cooldown
