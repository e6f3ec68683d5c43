"""One policy's reconciliation as a pure function: what the cluster shows now in, a Plan out.

Nothing here remembers earlier decisions; the Plan is recomputed from the observed objects every
time, so after an outage, a pause or a restart nothing stale is replayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import rfc3339
from ..contract import TRIPPED_STATES, Reading, unknown
from ..model import CircuitStateView, Condition, NodeView, PodView, PolicyView
from ..names import CONDITION_TYPE
from .caps import apply_cap, resolve_cap, storm_reached
from .circuit_state import circuit_events, desired_circuit_state
from .intents import (
    CircuitStateDelete,
    CircuitStateWrite,
    ConditionWrite,
    EventIntent,
    Eviction,
    NodeChange,
    ObjectRef,
    Plan,
    PolicyStatusWrite,
)
from .nodes import CORDONED_BY, NodeDecision, Trip, decide_node_action, recent_trips
from .readiness import decide_readiness, same_condition
from .selection import endpoint_url

__all__ = ("OUR_UNREADY_REASONS", "PolicyObservation", "plan_cleanup", "plan_policy")

# Reasons of the False conditions circuitgate writes; a False condition with another reason
# was not written by us and is not ours to restore.
OUR_UNREADY_REASONS = frozenset({"CircuitOpen", "CircuitForcedOpen"})


@dataclass(frozen=True)
class PolicyObservation:
    """Everything one policy's decisions depend on, as the cluster and the endpoints show it."""

    policy: PolicyView
    selected: Sequence[PodView]
    pods: Mapping[str, PodView]
    readings: Mapping[str, Reading]
    circuit_states: Mapping[str, CircuitStateView]
    nodes: Mapping[str, NodeView]
    trips: Mapping[str, Sequence[Trip]]
    now: float
    overlapping: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    evicted_recently: frozenset[str] = frozenset()
    # Pods (by uid) whose endpoint is being read for the first time: their readiness waits for
    # that answer (bounded by the policy's timeout), rather than being written twice.
    first_read_pending: frozenset[str] = frozenset()


def _pod_ref(pod: PodView) -> ObjectRef:
    return ObjectRef("Pod", pod.name, pod.namespace, pod.uid)


def _node_ref(node: NodeView) -> ObjectRef:
    return ObjectRef("Node", node.name, "", node.uid)


def _policy_ref(policy: PolicyView) -> ObjectRef:
    return ObjectRef(
        "CircuitPolicy", policy.name, policy.namespace, policy.uid, "circuitgate.io/v1alpha1"
    )


def _current_reading(
    pod: PodView, policy: PolicyView, readings: Mapping[str, Reading]
) -> Reading | None:
    spec = policy.spec
    if not pod.pod_ip:
        return None
    url = endpoint_url(pod, spec.port, spec.path)
    if url is None:
        return unknown(f"http://{pod.pod_ip}", f"the pod has no container port named {spec.port!r}")
    reading = readings.get(pod.uid)
    # A reading of an old address (the pod or the policy changed since) says nothing now.
    return reading if reading is not None and reading.url == url else None


def plan_policy(obs: PolicyObservation) -> Plan:
    """Decide every change for one policy: CircuitStates, readiness, nodes, status, Events."""
    policy, spec = obs.policy, obs.policy.spec
    stamp = rfc3339(obs.now)
    plan = Plan()
    matched = [pod for pod in obs.selected if pod.running]
    matched_names = {pod.name for pod in matched}
    states: dict[str, dict[str, Any]] = {}

    for pod in matched:
        status = _plan_circuit_state(plan, obs, pod, stamp)
        if status is not None:
            states[pod.name] = status
    _plan_orphans(plan, obs, matched_names, stamp)

    tripped = sum(1 for s in states.values() if s["state"] in TRIPPED_STATES)
    storm = storm_reached(spec.safety.storm_threshold, len(matched), tripped)
    capped_pods = _plan_readiness(plan, obs, matched, states, storm, stamp)
    capped_nodes, cordoned = _plan_nodes(plan, obs, matched, storm)

    unready = {
        pod.name
        for pod in matched
        if pod.gate_condition is not None and pod.gate_condition.status == "False"
    }
    for write in plan.conditions:
        if write.marks_unready:
            unready.add(write.pod)
        else:
            unready.discard(write.pod)
    _plan_policy_status(
        plan,
        obs,
        matched=len(matched),
        tripped=tripped,
        unready=len(unready),
        cordoned=cordoned,
        storm=storm,
        capped=capped_pods or capped_nodes,
    )
    for name, policies in sorted(obs.overlapping.items()):
        if policies and policies[0] == policy.name and name in obs.pods:
            pod = obs.pods[name]
            message = f"selected by policies {', '.join(policies)}; none of them watches it"
            plan.events.append(
                EventIntent(_pod_ref(pod), "OverlappingPolicies", message, "Warning")
            )
            # Its gate would otherwise keep it unready for ever.
            first = _first_condition(pod, "OverlappingPolicies", message, stamp)
            if first is not None and pod.running and not spec.dry_run:
                plan.conditions.append(first)
    return plan


def _plan_circuit_state(
    plan: Plan, obs: PolicyObservation, pod: PodView, stamp: str
) -> dict[str, Any] | None:
    """Plan the pod's CircuitState; return its status (as it will be), or None if none yet."""
    observed = obs.circuit_states.get(pod.name)
    if observed is not None and (
        (observed.owner_uid and observed.owner_uid != pod.uid) or observed.policy != obs.policy.name
    ):
        # Left by an earlier pod of the same name (the garbage collector may be slower) or
        # by another policy: remove it, and write ours once it is gone.
        plan.circuit_state_deletes.append(CircuitStateDelete(pod.namespace, pod.name))
        return None
    reading = _current_reading(pod, obs.policy, obs.readings)
    if reading is None:
        return dict(observed.status) if observed is not None and observed.status else None
    previous = observed.status if observed is not None else None
    status = desired_circuit_state(
        pod=pod, policy=obs.policy.name, reading=reading, previous=previous, now=stamp
    )
    if observed is None or dict(observed.status) != status:
        events = circuit_events(pod, previous.get("state") if previous else None, status)
        plan.circuit_states.append(
            CircuitStateWrite(
                namespace=pod.namespace,
                name=pod.name,
                pod_uid=pod.uid,
                policy=obs.policy.name,
                status=status,
                create=observed is None,
                observed=dict(previous or {}),
                events=tuple(events),
            )
        )
    return status


def _plan_orphans(plan: Plan, obs: PolicyObservation, matched: set[str], stamp: str) -> None:
    """CircuitStates of this policy whose pod it no longer watches: restore and remove."""
    for name, state in sorted(obs.circuit_states.items()):
        if state.policy != obs.policy.name or name in matched:
            continue
        pod = obs.pods.get(name)
        if pod is not None and pod.running and not obs.policy.paused:
            write = _restore(pod, stamp, "no longer watched by policy " + obs.policy.name)
            if write is not None:
                plan.conditions.append(write)
        plan.circuit_state_deletes.append(CircuitStateDelete(state.namespace, name))


def _restore(pod: PodView, stamp: str, why: str) -> ConditionWrite | None:
    """Put back a False condition that circuitgate wrote, as True."""
    current = pod.gate_condition
    if current is None or current.status != "False" or current.reason not in OUR_UNREADY_REASONS:
        return None
    condition = Condition(CONDITION_TYPE, "True", "CircuitgateReleased", why, stamp)
    event = EventIntent(_pod_ref(pod), "PodMarkedReady", why)
    return ConditionWrite(pod.namespace, pod.name, condition, events=(event,))


def _first_condition(pod: PodView, reason: str, why: str, stamp: str) -> ConditionWrite | None:
    """True for a gated pod that has no condition yet: nobody else will ever set it."""
    if not pod.gated or pod.gate_condition is not None:
        return None
    return ConditionWrite(
        pod.namespace, pod.name, Condition(CONDITION_TYPE, "True", reason, why, stamp)
    )


def _first_trues(
    candidates: Sequence[tuple[str, PodView, Condition]], reason: str, why: str, stamp: str
) -> list[ConditionWrite]:
    writes = (_first_condition(pod, reason, why, stamp) for _, pod, _ in candidates)
    return [w for w in writes if w is not None]


def _plan_readiness(
    plan: Plan,
    obs: PolicyObservation,
    matched: Sequence[PodView],
    states: Mapping[str, Mapping[str, Any]],
    storm: bool,
    stamp: str,
) -> bool:
    """Plan readiness conditions; return whether the unready-pods cap held any pod back."""
    policy, spec = obs.policy, obs.policy.spec
    candidates: list[tuple[str, PodView, Condition]] = []
    restores: list[ConditionWrite] = []
    for pod in matched:
        if not pod.gated:
            if spec.readiness_enabled:
                message = (
                    f"selected by policy {policy.name} but has no readiness gate "
                    f"{CONDITION_TYPE}; circuitgate cannot mark it unready"
                )
                plan.events.append(
                    EventIntent(_pod_ref(pod), "ReadinessGateMissing", message, "Warning")
                )
            continue
        if not spec.readiness_enabled:
            why = f"readiness is disabled in policy {policy.name}"
            write = _restore(pod, stamp, why) or _first_condition(
                pod, "ReadinessDisabled", why, stamp
            )
            if write is not None:
                restores.append(write)
            continue
        if pod.uid in obs.first_read_pending and pod.name not in states:
            continue
        status = states.get(pod.name, {"state": "unknown"})
        wanted = decide_readiness(pod, status, stamp)
        current = pod.gate_condition
        if wanted is None or same_condition(current, wanted):
            continue
        if wanted.status == "False" and (current is None or current.status != "False"):
            candidates.append((str(status.get("openedAt") or ""), pod, wanted))
            continue
        events: tuple[EventIntent, ...] = ()
        if current is not None and current.status == "False" and wanted.status == "True":
            events = (EventIntent(_pod_ref(pod), "PodMarkedReady", wanted.message),)
        restores.append(ConditionWrite(pod.namespace, pod.name, wanted, events=events))

    candidates.sort(key=lambda c: (c[0], c[1].name))
    held = sum(
        1 for p in matched if p.gate_condition is not None and p.gate_condition.status == "False"
    )
    if policy.paused:
        plan.suppress("mark_unready", "paused", len(candidates))
        plan.suppress("mark_ready", "paused", len(restores))
        why = "actions are paused by the circuitgate.io/paused annotation"
        plan.conditions.extend(_first_trues(candidates, "Paused", why, stamp))
        plan.conditions.extend(w for w in restores if obs.pods[w.pod].gate_condition is None)
        return False
    allowed: list[tuple[str, PodView, Condition]] = []
    held_back: list[tuple[str, PodView, Condition]] = []
    capped = False
    if storm:
        held_back = candidates
        plan.suppress("mark_unready", "storm", len(candidates))
        why = "the circuit is open, but so are too many others (suspected shared outage)"
        reason = "SuspectedSharedOutage"
    else:
        allowed, held_back = apply_cap(candidates, spec.safety.max_unready_pods, len(matched), held)
        if held_back:
            capped = True
            plan.suppress("mark_unready", "cap", len(held_back))
        why = "the circuit is open, but the unready-pods cap is reached"
        reason = "SafetyCapReached"
    # A held-back pod that has no condition yet gets True: the cap exists to keep pods serving.
    writes = list(restores) + _first_trues(held_back, reason, why, stamp)
    for opened_at, pod, wanted in allowed:
        event = EventIntent(_pod_ref(pod), "PodMarkedUnready", wanted.message, "Warning")
        writes.append(
            ConditionWrite(
                pod.namespace,
                pod.name,
                wanted,
                marks_unready=True,
                opened_at=opened_at or None,
                events=(event,),
            )
        )
    if spec.dry_run:
        for write in writes:
            current = obs.pods[write.pod].gate_condition
            if current is None and write.condition.status == "True":
                # A first True changes nothing a Service sees; without it the gate would
                # keep the pod unready for ever.
                plan.conditions.append(write)
                continue
            verb = "mark unready" if write.condition.status == "False" else "mark ready"
            for event in write.events:
                message = f"dry run: would {verb}: {event.message}"
                plan.events.append(EventIntent(event.ref, event.reason, message, "Normal"))
        plan.suppress("mark_unready", "dry_run", sum(1 for w in writes if w.marks_unready))
    else:
        plan.conditions.extend(writes)
    return capped


def _plan_nodes(
    plan: Plan, obs: PolicyObservation, matched: Sequence[PodView], storm: bool
) -> tuple[bool, int]:
    """Plan node actions; return (whether the cordon cap held one back, nodes held after)."""
    policy, spec = obs.policy, obs.policy.spec
    key = policy.key
    pod_nodes = {pod.node_name for pod in matched if pod.node_name}
    names = pod_nodes | set(obs.trips)
    names |= {n.name for n in obs.nodes.values() if n.annotations.get(CORDONED_BY) == key}
    held = sum(
        1 for n in obs.nodes.values() if n.annotations.get(CORDONED_BY) == key and n.unschedulable
    )
    cordoned = held
    decisions: list[tuple[NodeView, NodeDecision, int]] = []
    for name in sorted(names):
        node = obs.nodes.get(name)
        if node is None:
            continue
        trips = obs.trips.get(name, ())
        decision = decide_node_action(node, policy=key, spec=spec.nodes, trips=trips, now=obs.now)
        count = len(recent_trips(node, trips, spec.nodes.window, obs.now))
        decisions.append((node, decision, count))
    # Most trips first, so a cap keeps the worst node.
    decisions.sort(key=lambda d: (d[1].action != "cordon", -d[2], d[0].name))
    capped = False
    cap = resolve_cap(spec.safety.max_cordoned_nodes, len(pod_nodes))
    projected = held  # as if every planned change (dry run included) were made
    for node, decision, _ in decisions:
        change = decision.change
        if decision.action == "hold":
            _plan_evictions(plan, obs, node, matched)
            continue
        if change is None:
            continue
        if policy.paused:
            plan.suppress(decision.action, "paused")
            continue
        if decision.action == "cordon":
            if storm:
                plan.suppress("cordon", "storm")
                continue
            if projected + 1 > cap:
                plan.suppress("cordon", "cap")
                capped = True
                continue
            projected += 1
            event = EventIntent(
                _node_ref(node), "NodeCordoned", f"policy {key}: {decision.reason}", "Warning"
            )
        else:
            if decision.action == "uncordon":
                projected -= 1
            event = EventIntent(
                _node_ref(node), "NodeUncordoned", f"policy {key}: {decision.reason}"
            )
        if spec.dry_run:
            message = f"dry run: would {decision.action}: {event.message}"
            plan.events.append(EventIntent(event.ref, event.reason, message, "Normal"))
            plan.suppress(decision.action, "dry_run")
            continue
        plan.nodes.append(_with_events(change, event))
        cordoned = projected
    return capped, cordoned


def _with_events(change: NodeChange, event: EventIntent) -> NodeChange:
    return NodeChange(
        change.node,
        change.action,
        change.unschedulable,
        change.taints,
        change.annotations,
        change.resource_version,
        change.reason,
        events=(event,),
    )


def _plan_evictions(
    plan: Plan, obs: PolicyObservation, node: NodeView, matched: Sequence[PodView]
) -> None:
    """Evict the pods that tripped on a node this policy holds cordoned, if asked to."""
    spec = obs.policy.spec
    if not spec.nodes.evict_tripped_pods or obs.policy.paused:
        return
    tripped = {
        t.pod for t in recent_trips(node, obs.trips.get(node.name, ()), spec.nodes.window, obs.now)
    }
    for pod in matched:
        if pod.node_name != node.name or pod.name not in tripped:
            continue
        if pod.name in obs.evicted_recently:
            continue
        if spec.dry_run:
            message = f"dry run: would evict: tripped on cordoned node {node.name}"
            plan.events.append(EventIntent(_pod_ref(pod), "PodEvicted", message))
            continue
        plan.evictions.append(Eviction(pod.namespace, pod.name, node.name, pod.uid))


def _condition(
    observed: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    stamp: str,
    generation: int,
) -> dict[str, Any]:
    before = next((c for c in observed if c.get("type") == type_), None)
    keep = (
        before is not None and before.get("status") == status and before.get("lastTransitionTime")
    )
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if keep and before else stamp,
        "observedGeneration": generation,
    }


def _plan_policy_status(
    plan: Plan,
    obs: PolicyObservation,
    *,
    matched: int,
    tripped: int,
    unready: int,
    cordoned: int,
    storm: bool,
    capped: bool,
) -> None:
    policy, spec = obs.policy, obs.policy.spec
    stamp = rfc3339(obs.now)
    observed = dict(policy.status)
    old_conditions = list(observed.get("conditions") or [])
    old = {c.get("type"): c.get("status") for c in old_conditions}
    overlapping = sorted(n for n, ps in obs.overlapping.items() if policy.name in ps)
    storm_message = (
        f"{tripped} of {matched} watched workers tripped (threshold "
        f"{spec.safety.storm_threshold}): probably a shared cause; no new action is taken"
        if storm
        else f"{tripped} of {matched} watched workers tripped"
    )
    cap_message = (
        f"caps: unready pods {spec.safety.max_unready_pods}, cordoned nodes "
        f"{spec.safety.max_cordoned_nodes}"
    )
    conditions = [
        _condition(
            old_conditions,
            "Capped",
            "True" if capped else "False",
            "SafetyCapReached" if capped else "WithinCaps",
            ("a safety cap held an action back; " if capped else "") + cap_message,
            stamp,
            policy.generation,
        ),
        _condition(
            old_conditions,
            "SharedOutageSuspected",
            "True" if storm else "False",
            "SuspectedSharedOutage" if storm else "NoStorm",
            storm_message,
            stamp,
            policy.generation,
        ),
        _condition(
            old_conditions,
            "Paused",
            "True" if policy.paused else "False",
            "PauseAnnotation" if policy.paused else "Active",
            "new actions are paused by the circuitgate.io/paused annotation"
            if policy.paused
            else "acting on trips",
            stamp,
            policy.generation,
        ),
        _condition(
            old_conditions,
            "Overlapping",
            "True" if overlapping else "False",
            "OverlappingPolicies" if overlapping else "NoOverlap",
            ("pods selected by other policies too, watched by none: " + ", ".join(overlapping[:20]))
            if overlapping
            else "no pod is selected by another policy",
            stamp,
            policy.generation,
        ),
    ]
    status = {
        "observedGeneration": policy.generation,
        "matchedPods": matched,
        "openCircuits": tripped,
        "unreadyPods": max(unready, 0),
        "cordonedNodes": max(cordoned, 0),
        "conditions": conditions,
    }
    ref = _policy_ref(policy)
    if capped and old.get("Capped") != "True":
        plan.events.append(
            EventIntent(ref, "SafetyCapReached", conditions[0]["message"], "Warning")
        )
    if storm and old.get("SharedOutageSuspected") != "True":
        plan.events.append(EventIntent(ref, "SuspectedSharedOutage", storm_message, "Warning"))
    if not storm and old.get("SharedOutageSuspected") == "True":
        plan.events.append(EventIntent(ref, "SharedOutageCleared", storm_message))
    if status != {k: observed.get(k) for k in status}:
        plan.policy_status = PolicyStatusWrite(policy.namespace, policy.name, status, observed)


def plan_cleanup(
    policy: PolicyView,
    *,
    pods: Mapping[str, PodView],
    circuit_states: Mapping[str, CircuitStateView],
    nodes: Mapping[str, NodeView],
    now: float,
) -> Plan:
    """Undo everything a deleted policy did: readiness back to True, its cordons and taints
    off, its CircuitStates removed."""
    plan = Plan()
    stamp = rfc3339(now)
    why = f"policy {policy.name} was deleted"
    ours = {name for name, s in circuit_states.items() if s.policy == policy.name}
    for pod in pods.values():
        if pod.name in ours or policy.spec.selector.matches(pod.labels):
            write = _restore(pod, stamp, why)
            if write is not None:
                plan.conditions.append(write)
    for name in sorted(ours):
        plan.circuit_state_deletes.append(CircuitStateDelete(policy.namespace, name))
    disabled = type(policy.spec.nodes)(enabled=False)
    for node in nodes.values():
        if node.annotations.get(CORDONED_BY) != policy.key:
            continue
        decision = decide_node_action(node, policy=policy.key, spec=disabled, trips=(), now=now)
        if decision.change is not None:
            message = f"policy {policy.key} was deleted: {decision.reason}"
            event = EventIntent(_node_ref(node), "NodeUncordoned", message)
            plan.nodes.append(_with_events(decision.change, event))
    return plan
