"""Whether a node should be cordoned, kept, released or restored, from its trips and its marks.

circuitgate marks what it does with annotations on the node, and only ever undoes what those
annotations say it did: a cordon or taint it did not make is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..clock import parse_time, rfc3339
from ..model import NodeRemediation, NodeView, PodView, Taint
from ..names import EVICTED_CONDITION_TYPE, FIELD_MANAGER
from .intents import NodeAction, NodeChange

__all__ = (
    "CORDONED_AT",
    "CORDONED_BY",
    "CORDON_REASON",
    "KEEP_CORDONED",
    "RELEASED_AT",
    "RELEASED_BY",
    "RELEASE_MARKS",
    "TAINTED",
    "NodeDecision",
    "SeenEviction",
    "Trip",
    "cooldown_deadline",
    "decide_node_action",
    "evictions_on",
    "forget_release",
    "recent_trips",
)

CORDONED_BY = "circuitgate.io/cordoned-by"
CORDONED_AT = "circuitgate.io/cordoned-at"
CORDON_REASON = "circuitgate.io/cordon-reason"
TAINTED = "circuitgate.io/taint"
# When circuitgate last let go of a node (after its cool-down, or because someone else
# uncordoned it): trips before it are forgiven, so only a new incident cordons it again.
RELEASED_AT = "circuitgate.io/released-at"
# The policy that let go of it: the one to remove both marks once the window has passed (no
# trip before the release is inside it then: nothing is left to forgive), or when it goes.
RELEASED_BY = "circuitgate.io/released-by"
RELEASE_MARKS = (RELEASED_AT, RELEASED_BY)
_OURS = (CORDONED_BY, CORDONED_AT, CORDON_REASON, TAINTED)
# Set to "true" by an admin on a node we cordoned: the cordon is theirs from then on (the sure
# way to take a node over, since `kubectl cordon` of a cordoned node changes nothing we see).
KEEP_CORDONED = "circuitgate.io/keep-cordoned"
# The pod condition the API server sets on a pod the Eviction API evicts (kubectl drain does).
_DISRUPTION = "DisruptionTarget"
_BY_EVICTION_API = "EvictionByEvictionAPI"


@dataclass(frozen=True)
class Trip:
    """One opening of one pod's breaker, at Unix time ``at``."""

    pod: str
    at: float


@dataclass(frozen=True)
class SeenEviction:
    """A pod on a node evicted through the Eviction API, at Unix time ``at``."""

    pod: str
    at: float


def evictions_on(node: str, pods: Iterable[PodView]) -> list[SeenEviction]:
    """Someone else's evictions of the pods we can see on a node, from their DisruptionTarget
    condition: of pods without our mark (`EVICTED_CONDITION_TYPE`)."""
    seen = []
    for pod in pods:
        condition = pod.conditions.get(_DISRUPTION)
        if pod.node_name != node or condition is None or condition.status != "True":
            continue
        at = parse_time(condition.last_transition_time)
        ours = pod.conditions.get(EVICTED_CONDITION_TYPE)
        if ours is not None and ours.status == "True":
            continue
        if condition.reason == _BY_EVICTION_API and at is not None:
            seen.append(SeenEviction(pod.name, at))
    return seen


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
    evicted: Sequence[SeenEviction] = (),
) -> NodeDecision:
    """The node action for one policy's view of one node (before caps, storm and pause);
    ``evicted``: the evictions seen on the node (`evictions_on`)."""
    owner = node.annotations.get(CORDONED_BY)
    if owner == policy:
        return _decide_ours(node, spec, trips, now, evicted)
    if not owner and node.annotations.get(RELEASED_BY) == policy:
        forget = _forget_release(node, spec, now)
        if forget is not None:
            return forget
    if node.excluded:
        return NodeDecision("none", f"node {node.name} is labelled circuitgate.io/exclude=true")
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
        **dict.fromkeys(RELEASE_MARKS),
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


def _cordoned_again_by_someone_else(node: NodeView, cordoned_at: float) -> bool:
    """Whether another writer set spec.unschedulable after our cordon (managedFields keep
    whole seconds: the second of our cordon counts as before it)."""
    return any(
        manager != FIELD_MANAGER and at >= int(cordoned_at) + 1
        for manager, at in node.cordoned_by_managers
    )


def _drained_by_someone_else(evicted: Sequence[SeenEviction], cordoned_at: float) -> str | None:
    """A pod someone else evicted after our cordon: someone drains the node. Condition times
    keep whole seconds: an eviction in the second of our cordon counts as after it (a drain
    follows a cordon at once; at worst a node someone evicted from just then stays cordoned,
    theirs)."""
    for eviction in evicted:
        if eviction.at >= int(cordoned_at):
            return eviction.pod
    return None


def _someone_else(
    node: NodeView, evicted: Sequence[SeenEviction], cordoned_at: float
) -> str | None:
    """What shows that the node is someone else's now, if anything does."""
    if not node.unschedulable:
        return f"node {node.name} was uncordoned by someone else"
    if node.annotations.get(KEEP_CORDONED) == "true":
        return f"node {node.name} is annotated {KEEP_CORDONED}=true"
    if _cordoned_again_by_someone_else(node, cordoned_at):
        return f"node {node.name} was cordoned again by someone else"
    drained = _drained_by_someone_else(evicted, cordoned_at)
    if drained is not None:
        return f"node {node.name} is being drained by someone else (pod {drained} evicted)"
    return None


def _decide_ours(
    node: NodeView,
    spec: NodeRemediation,
    trips: Sequence[Trip],
    now: float,
    evicted: Sequence[SeenEviction],
) -> NodeDecision:
    """Checked before every other rule: an exclude label or someone else's change after
    ours must not leave our cordon on for good."""
    without_ours = _without_our_taint(node)
    cordoned_at = parse_time(node.annotations.get(CORDONED_AT)) or now
    someone_else = _someone_else(node, evicted, cordoned_at)
    if someone_else is not None:
        reason = f"{someone_else}; circuitgate lets it be"
        annotations = _released(node, now)
        change = NodeChange(
            node.name, "release", None, without_ours, annotations, node.resource_version, reason
        )
        return NodeDecision("release", reason, change)
    last = max([cordoned_at, *(trip.at for trip in trips)])
    quiet_for = now - last
    if not spec.enabled or node.excluded or quiet_for >= spec.cooldown:
        reason = (
            f"node {node.name} is labelled circuitgate.io/exclude=true"
            if node.excluded
            else "node remediation was disabled"
            if not spec.enabled
            else f"no trips for {int(quiet_for)}s (cool-down {int(spec.cooldown)}s)"
        )
        # Marked released too: the trips that led here are dealt with, and must not
        # cordon the node again while they are still inside the window.
        annotations = _released(node, now)
        change = NodeChange(
            node.name, "uncordon", False, without_ours, annotations, node.resource_version, reason
        )
        return NodeDecision("uncordon", reason, change)
    return NodeDecision("hold", f"cooling down until {rfc3339(last + spec.cooldown)}")


def _released(node: NodeView, now: float) -> dict[str, str | None]:
    """The annotations of a node its policy lets go of: its marks go, the release's come."""
    return {
        **dict.fromkeys(_OURS),
        RELEASED_AT: rfc3339(now, precise=True),
        RELEASED_BY: node.annotations.get(CORDONED_BY),
    }


def _forget_release(node: NodeView, spec: NodeRemediation, now: float) -> NodeDecision | None:
    """Remove the release marks once every trip they forgive is out of the window."""
    released = parse_time(node.annotations.get(RELEASED_AT)) or 0.0
    if now < released + spec.window:
        return None
    reason = f"the trips released at {rfc3339(released)} are out of the window"
    return NodeDecision("forget", reason, forget_release(node, reason))


def forget_release(node: NodeView, reason: str) -> NodeChange:
    """The change that removes a node's release marks, and nothing else."""
    marks = dict.fromkeys(RELEASE_MARKS)
    return NodeChange(node.name, "forget", None, None, marks, node.resource_version, reason)


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
