"""The status a policy reports (counts and conditions), and the Events its changes mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..clock import rfc3339
from .intents import EventIntent, Plan, PolicyStatusWrite, policy_ref
from .observation import PolicyObservation

__all__ = ("plan_policy_status",)


def _condition(
    observed: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reasons: tuple[str, str],
    message: str,
    stamp: str,
    generation: int,
) -> dict[str, Any]:
    """A status condition; ``reasons`` for True and for False. Its transition time stays
    while its status does."""
    value = "True" if status else "False"
    before = next((c for c in observed if c.get("type") == type_), None)
    keep = before is not None and before.get("status") == value and before.get("lastTransitionTime")
    return {
        "type": type_,
        "status": value,
        "reason": reasons[0] if status else reasons[1],
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if keep and before else stamp,
        "observedGeneration": generation,
    }


def plan_policy_status(
    plan: Plan,
    obs: PolicyObservation,
    *,
    matched: int,
    tripped: int,
    outliers: int,
    unready: int,
    cordoned: int,
    storm: bool,
    capped: bool,
) -> None:
    """Plan the status write (only if it changes) and the Events of a cap reached and of a
    suspected shared outage begun or over."""
    policy, spec = obs.policy, obs.policy.spec
    stamp = rfc3339(obs.now)
    observed = dict(policy.status)
    old_conditions = list(observed.get("conditions") or [])
    old = {c.get("type"): c.get("status") for c in old_conditions}
    overlapping = sorted(n for n, ps in obs.overlapping.items() if policy.name in ps)
    counted = f"{tripped} of {matched} watched workers tripped" + (
        f", {outliers} outliers" if outliers else ""
    )
    storm_message = (
        f"{counted} (threshold "
        f"{spec.safety.storm_threshold}): probably a shared cause; no new action is taken"
        if storm
        else counted
    )
    cap_message = (
        f"caps: unready pods {spec.safety.max_unready_pods}, cordoned nodes "
        f"{spec.safety.max_cordoned_nodes}"
    )
    paused_message = (
        "new actions are paused by the circuitgate.io/paused annotation"
        if policy.paused
        else "acting on trips"
    )
    overlap_message = (
        "pods selected by other policies too, watched by none: " + ", ".join(overlapping[:20])
        if overlapping
        else "no pod is selected by another policy"
    )

    def condition(type_: str, value: bool, reasons: tuple[str, str], message: str) -> Any:
        return _condition(old_conditions, type_, value, reasons, message, stamp, policy.generation)

    capped_message = ("a safety cap held an action back; " if capped else "") + cap_message
    conditions = [
        condition("Capped", capped, ("SafetyCapReached", "WithinCaps"), capped_message),
        condition(
            "SharedOutageSuspected", storm, ("SuspectedSharedOutage", "NoStorm"), storm_message
        ),
        condition("Paused", policy.paused, ("PauseAnnotation", "Active"), paused_message),
        condition(
            "Overlapping", bool(overlapping), ("OverlappingPolicies", "NoOverlap"), overlap_message
        ),
    ]
    status = {
        "observedGeneration": policy.generation,
        "matchedPods": matched,
        "openCircuits": tripped,
        "outliers": outliers,
        "unreadyPods": max(unready, 0),
        "cordonedNodes": max(cordoned, 0),
        "conditions": conditions,
    }
    ref = policy_ref(policy)
    if capped and old.get("Capped") != "True":
        plan.events.append(EventIntent(ref, "SafetyCapReached", capped_message, "Warning"))
    if storm and old.get("SharedOutageSuspected") != "True":
        plan.events.append(EventIntent(ref, "SuspectedSharedOutage", storm_message, "Warning"))
    if not storm and old.get("SharedOutageSuspected") == "True":
        plan.events.append(EventIntent(ref, "SharedOutageCleared", storm_message))
    if status != {k: observed.get(k) for k in status}:
        plan.policy_status = PolicyStatusWrite(policy.namespace, policy.name, status, observed)
