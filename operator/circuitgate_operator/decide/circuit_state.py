"""The CircuitState each watched pod should have, given its last reading, and the Events its
change means; the policy's CircuitStates of pods it no longer watches go."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..clock import rfc3339
from ..contract import BreakerState, Reading
from ..model import PodView
from .intents import CircuitStateDelete, CircuitStateWrite, EventIntent, Plan, pod_ref
from .observation import PolicyObservation
from .readiness import restore

__all__ = (
    "circuit_events",
    "desired_circuit_state",
    "plan_circuit_states",
    "plan_orphans",
    "status_patch",
)

# Carried over from the last good reading while the endpoint cannot be read: an unreachable
# worker has not forgotten its trips.
_REMEMBERED = ("breaker", "failures", "trips", "openedAt", "mayCloseAt", "consumptionPaused")


def desired_circuit_state(
    *,
    pod: PodView,
    policy: str,
    reading: Reading,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The status to record. Keys with no value are left out rather than set to null, so the
    stored object and this dict compare equal when nothing changed."""
    previous = previous or {}
    status: dict[str, Any] = {"pod": pod.name, "policy": policy, "state": reading.state}
    if pod.node_name:
        status["node"] = pod.node_name
    if reading.reachable:
        fresh = {
            "breaker": reading.breaker,
            "failures": reading.failures,
            "trips": reading.trips,
            "openedAt": reading.opened_at,
            "mayCloseAt": reading.may_close_at,
            "consumptionPaused": reading.consumption_paused,
            "sequence": reading.sequence,
        }
        status.update({key: value for key, value in fresh.items() if value is not None})
    else:
        status.update({key: previous[key] for key in (*_REMEMBERED, "sequence") if key in previous})
    same_state = previous.get("state") == reading.state and previous.get("lastTransitionTime")
    status["lastTransitionTime"] = previous["lastTransitionTime"] if same_state else now
    status["endpoint"] = {"url": reading.url, "reachable": reading.reachable}
    if reading.reason:
        status["endpoint"]["reason"] = reading.reason[:1024]
    return status


def status_patch(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from observed to desired: keys gone from desired become null."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = observed.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if value != old:
                patch[key] = status_patch(value, old)
        elif value != old:
            patch[key] = value
    for key in observed:
        if key not in desired:
            patch[key] = None
    return patch


def circuit_events(
    pod: PodView, previous_state: str | None, status: Mapping[str, Any]
) -> list[EventIntent]:
    """Events for a change of state (none when the state did not change)."""
    state = status["state"]
    if state == previous_state:
        return []
    ref = pod_ref(pod)
    breaker = status.get("breaker") or "?"
    if state == BreakerState.OPEN:
        until = status.get("mayCloseAt")
        message = (
            f"breaker {breaker} opened (trips {status.get('trips', 0)}, "
            f"{status.get('failures', 0)} consecutive failures)"
        )
        message += f"; may close at {until}" if until else ""
        return [EventIntent(ref, "CircuitOpened", message, "Warning")]
    if state == BreakerState.FORCED_OPEN:
        return [EventIntent(ref, "CircuitOpened", f"breaker {breaker} forced open", "Warning")]
    if state == BreakerState.HALF_OPEN:
        return [
            EventIntent(ref, "CircuitHalfOpen", f"breaker {breaker} half-open: a trial task runs")
        ]
    if state in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED):
        if previous_state is None:
            return []
        how = "forced closed" if state == BreakerState.FORCED_CLOSED else "closed"
        return [EventIntent(ref, "CircuitClosed", f"breaker {breaker} {how}")]
    endpoint = status.get("endpoint") or {}
    message = f"{endpoint.get('url', '?')}: {endpoint.get('reason', 'no usable answer')}"
    return [EventIntent(ref, "EndpointUnreachable", message, "Warning")]


def plan_circuit_states(
    plan: Plan, obs: PolicyObservation, matched: Sequence[PodView]
) -> dict[str, dict[str, Any]]:
    """Plan the watched pods' CircuitStates; return each one's status as it will be (none for a
    pod that has no state yet)."""
    stamp = rfc3339(obs.now)
    states: dict[str, dict[str, Any]] = {}
    for pod in matched:
        status = _plan_circuit_state(plan, obs, pod, stamp)
        if status is not None:
            states[pod.name] = status
    return states


def _plan_circuit_state(
    plan: Plan, obs: PolicyObservation, pod: PodView, stamp: str
) -> dict[str, Any] | None:
    observed = obs.circuit_states.get(pod.name)
    if observed is not None and (
        (observed.owner_uid and observed.owner_uid != pod.uid) or observed.policy != obs.policy.name
    ):
        # Left by an earlier pod of the same name (the garbage collector may be slower) or
        # by another policy: remove it, and write ours once it is gone.
        plan.circuit_state_deletes.append(CircuitStateDelete(pod.namespace, pod.name))
        return None
    reading = obs.reading(pod)
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


def plan_orphans(plan: Plan, obs: PolicyObservation, matched: Sequence[PodView]) -> None:
    """CircuitStates of this policy whose pod it no longer watches: give the pod's condition
    back and remove the state."""
    stamp = rfc3339(obs.now)
    watched = {pod.name for pod in matched}
    for name, state in sorted(obs.circuit_states.items()):
        if state.policy != obs.policy.name or name in watched:
            continue
        pod = obs.pods.get(name)
        if pod is not None and pod.running:
            write = restore(pod, stamp, "no longer watched by policy " + obs.policy.name)
            if write is not None:
                plan.conditions.append(write)
        plan.circuit_state_deletes.append(CircuitStateDelete(state.namespace, name))
