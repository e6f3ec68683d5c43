"""The CircuitState a pod should have, given the last reading, and the Events its change means."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..contract import Reading
from ..model import PodView
from .intents import EventIntent, ObjectRef

__all__ = ("circuit_events", "desired_circuit_state", "status_patch")

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
    ref = ObjectRef("Pod", pod.name, pod.namespace, pod.uid)
    breaker = status.get("breaker") or "?"
    if state == "open":
        until = status.get("mayCloseAt")
        message = (
            f"breaker {breaker} opened (trips {status.get('trips', 0)}, "
            f"{status.get('failures', 0)} consecutive failures)"
        )
        message += f"; may close at {until}" if until else ""
        return [EventIntent(ref, "CircuitOpened", message, "Warning")]
    if state == "forced_open":
        return [EventIntent(ref, "CircuitOpened", f"breaker {breaker} forced open", "Warning")]
    if state == "half_open":
        return [
            EventIntent(ref, "CircuitHalfOpen", f"breaker {breaker} half-open: a trial task runs")
        ]
    if state in ("closed", "forced_closed"):
        if previous_state is None:
            return []
        how = "forced closed" if state == "forced_closed" else "closed"
        return [EventIntent(ref, "CircuitClosed", f"breaker {breaker} {how}")]
    endpoint = status.get("endpoint") or {}
    message = f"{endpoint.get('url', '?')}: {endpoint.get('reason', 'no usable answer')}"
    return [EventIntent(ref, "EndpointUnreachable", message, "Warning")]
