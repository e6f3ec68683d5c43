"""The readiness-gate condition a watched pod should carry, from its circuit's state, and the
condition writes of one policy: marks unready, restores and first Trues.

Planned as if nothing held them back; `restraint` then applies the pause, the storm brake,
the unready-pods cap and a dry run to them, once for the whole Plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..clock import parse_time, rfc3339
from ..contract import BreakerState
from ..model import Condition, PodView
from ..names import CONDITION_TYPE
from .caps import Cap
from .intents import ConditionWrite, EventIntent, Plan, pod_ref
from .memo import PlanMemo
from .observation import PolicyObservation
from .outliers import is_outlier, outlier_condition_message

__all__ = (
    "OUR_UNREADY_REASONS",
    "condition_write",
    "decide_readiness",
    "first_condition",
    "open_evidence_ends",
    "plan_overlaps",
    "plan_readiness",
    "restore",
    "same_condition",
    "unready_cap",
)

# Reasons of the False conditions circuitgate writes; a False condition with another reason
# was not written by us and is not ours to restore.
OUR_UNREADY_REASONS = frozenset({"CircuitOpen", "CircuitForcedOpen", "Outlier"})
# Recorded states that hold a pod unready (unknown keeps the False an open state set).
_HOLDING = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN, BreakerState.UNKNOWN})
# How long an open state that named no end (forced open) stays evidence once its endpoint can
# no longer be read.
STALE_OPEN_SECONDS = 600.0


def open_evidence_ends(status: Mapping[str, Any]) -> float | None:
    """When a recorded open state stops being evidence of an open circuit, if the endpoint
    cannot confirm it: at the end of the open period it showed (a live breaker is half-open
    by then, and a re-opened one would say so), or STALE_OPEN_SECONDS after the last change
    when it showed none. None when nothing says (never evidence to give a pod back on)."""
    may_close = parse_time(status.get("mayCloseAt"))
    if may_close is not None:
        return may_close
    since = parse_time(status.get("lastTransitionTime"))
    return since + STALE_OPEN_SECONDS if since is not None else None


def decide_readiness(pod: PodView, status: Mapping[str, Any], now: str) -> Condition | None:
    """The condition to hold, or None to leave the pod's condition as it is.

    Open and forced-open make it False; closed, half-open and forced-closed True (half-open
    needs traffic for its trial), but an outlier among its peers False unless forced
    closed. An unknown state changes nothing, since an unreadable endpoint is not evidence
    of a trip, except that a gated pod with no condition yet gets True at once (without the
    condition it could never become Ready) and an outlier's False goes: its evidence is gone.
    """
    state = status.get("state", BreakerState.UNKNOWN)
    breaker = status.get("breaker") or "?"
    current = pod.gate_condition
    if is_outlier(status):
        wanted = ("False", "Outlier", outlier_condition_message(status["outlier"]))
    elif state == BreakerState.OPEN:
        until = status.get("mayCloseAt")
        message = f"breaker {breaker} is open" + (f" until {until}" if until else "")
        wanted = ("False", "CircuitOpen", message)
    elif state == BreakerState.FORCED_OPEN:
        wanted = ("False", "CircuitForcedOpen", f"breaker {breaker} is forced open")
    elif state == BreakerState.HALF_OPEN:
        wanted = ("True", "CircuitHalfOpen", f"breaker {breaker} is half-open")
    elif state == BreakerState.FORCED_CLOSED:
        wanted = ("True", "CircuitForcedClosed", f"breaker {breaker} is forced closed")
    elif state == BreakerState.CLOSED:
        wanted = ("True", "CircuitClosed", f"breaker {breaker} is closed")
    elif current is None:
        wanted = ("True", "CircuitNotRead", "the breaker endpoint has not been read yet")
    elif current.status == "False" and current.reason == "Outlier":
        wanted = ("True", "CircuitNotRead", "the breaker endpoint cannot be read: no evidence")
    else:
        return None
    status_value, reason, message = wanted
    if current is not None and current.status == status_value:
        transition = current.last_transition_time or now
    else:
        transition = now
    return Condition(CONDITION_TYPE, status_value, reason, message, transition)


def same_condition(current: Condition | None, wanted: Condition) -> bool:
    """Whether writing wanted would change nothing a reader sees."""
    return current is not None and (current.status, current.reason, current.message) == (
        wanted.status,
        wanted.reason,
        wanted.message,
    )


def condition_write(
    pod: PodView,
    condition: Condition,
    *,
    marks_unready: bool = False,
    opened_at: str | None = None,
    events: tuple[EventIntent, ...] = (),
) -> ConditionWrite:
    return ConditionWrite(
        pod.namespace,
        pod.name,
        condition,
        marks_unready=marks_unready,
        opened_at=opened_at,
        events=events,
        first=pod.gate_condition is None,
    )


def restore(pod: PodView, stamp: str, why: str) -> ConditionWrite | None:
    """Put back a False condition that circuitgate wrote, as True."""
    current = pod.gate_condition
    if current is None or current.status != "False" or current.reason not in OUR_UNREADY_REASONS:
        return None
    condition = Condition(CONDITION_TYPE, "True", "CircuitgateReleased", why, stamp)
    return condition_write(
        pod, condition, events=(EventIntent(pod_ref(pod), "PodMarkedReady", why),)
    )


def first_condition(pod: PodView, reason: str, why: str, stamp: str) -> ConditionWrite | None:
    """True for a gated pod that has no condition yet: nobody else will ever set it."""
    if not pod.gated or pod.gate_condition is not None:
        return None
    return condition_write(pod, Condition(CONDITION_TYPE, "True", reason, why, stamp))


def unready_cap(obs: PolicyObservation, matched: Sequence[PodView]) -> Cap:
    """The unready-pods cap: a percentage of the watched pods, counting those unready now."""
    held = sum(
        1 for p in matched if p.gate_condition is not None and p.gate_condition.status == "False"
    )
    return Cap(obs.policy.spec.safety.max_unready_pods, len(matched), held)


def _stale_open_over(obs: PolicyObservation, pod: PodView, status: Mapping[str, Any]) -> bool:
    """Whether the pod has no good reading now and what is recorded of an open (or unknown)
    circuit is no evidence any more."""
    reading = obs.reading(pod)
    if reading is not None and reading.reachable:
        return False
    if status.get("state") not in _HOLDING:
        return False
    ends = open_evidence_ends(status)
    return ends is not None and obs.now >= ends


def plan_readiness(
    plan: Plan,
    obs: PolicyObservation,
    matched: Sequence[PodView],
    states: Mapping[str, Mapping[str, Any]],
    memo: PlanMemo | None = None,
) -> None:
    """Plan each watched pod's condition from its circuit's state. New unready marks come
    last, oldest opening first: the order in which a cap lets them through."""
    stamp = rfc3339(obs.now)
    marks: list[tuple[str, ConditionWrite]] = []
    for pod in matched:
        status = states.get(pod.name, _UNREAD)
        if memo is None:
            mark = _plan_pod_readiness(plan, obs, pod, status, stamp)
        else:
            inputs = (pod, status, obs.reading(pod), pod.uid in obs.first_read_pending)
            mark = memo.readiness.decide(
                plan, pod.uid, inputs, _timeless, _plan_pod_readiness, plan, obs, pod, status, stamp
            )
        if mark is not None:
            marks.append(mark)
    marks.sort(key=lambda mark: (mark[0], mark[1].pod))
    plan.conditions.extend(write for _, write in marks)


_UNREAD: Mapping[str, Any] = {"state": BreakerState.UNKNOWN}


def _timeless(inputs: tuple[object, ...], mark: tuple[str, ConditionWrite] | None) -> bool:
    """Whether a pass that changed nothing for this pod would change nothing at any time: not
    while an open state (the inputs' status) could stop being evidence."""
    _, status, *_ = cast(tuple[PodView, Mapping[str, Any], object, bool], inputs)
    return mark is None and status.get("state") not in _HOLDING


def _plan_pod_readiness(
    plan: Plan, obs: PolicyObservation, pod: PodView, status: Mapping[str, Any], stamp: str
) -> tuple[str, ConditionWrite] | None:
    """Plan one pod's condition; a new unready mark is returned (with its opening time, to
    order the marks by), not planned."""
    policy, spec = obs.policy, obs.policy.spec
    if not pod.gated:
        if spec.readiness_enabled:
            message = (
                f"selected by policy {policy.name} but has no readiness gate "
                f"{CONDITION_TYPE}; circuitgate cannot mark it unready"
            )
            event = EventIntent(pod_ref(pod), "ReadinessGateMissing", message, "Warning")
            plan.events.append(event)
        return None
    if not spec.readiness_enabled:
        why = f"readiness is disabled in policy {policy.name}"
        write = restore(pod, stamp, why) or first_condition(pod, "ReadinessDisabled", why, stamp)
        if write is not None:
            plan.conditions.append(write)
        return None
    if pod.uid in obs.first_read_pending and status is _UNREAD:
        return None
    if is_outlier(status) and obs.reading(pod) is None:
        return None  # a recorded verdict is evidence with its endpoint's answer: wait for it
    if _stale_open_over(obs, pod, status):
        # What is recorded is all there is (an unreadable endpoint, or a state read after a
        # restart before its first answer), and it holds a pod unready only while it lasts.
        ends = rfc3339(open_evidence_ends(status) or obs.now)
        why = f"the breaker endpoint cannot be read, and its last open period ended at {ends}"
        write = None if pod.uid in obs.first_read_pending else restore(pod, stamp, why)
        if write is not None:
            plan.conditions.append(write)
        if write is not None or status.get("state") != BreakerState.UNKNOWN:
            return None
    wanted = decide_readiness(pod, status, stamp)
    current = pod.gate_condition
    if wanted is None or same_condition(current, wanted):
        return None
    if wanted.status == "False" and (current is None or current.status != "False"):
        opened_at = str(status.get("openedAt") or (status.get("outlier") or {}).get("since") or "")
        event = EventIntent(pod_ref(pod), "PodMarkedUnready", wanted.message, "Warning")
        write = condition_write(
            pod, wanted, marks_unready=True, opened_at=opened_at or None, events=(event,)
        )
        return opened_at, write
    events: tuple[EventIntent, ...] = ()
    if current is not None and current.status == "False" and wanted.status == "True":
        events = (EventIntent(pod_ref(pod), "PodMarkedReady", wanted.message),)
    plan.conditions.append(condition_write(pod, wanted, events=events))
    return None


def plan_overlaps(plan: Plan, obs: PolicyObservation) -> None:
    """Pods two or more policies select are watched by none: the first of those policies says
    so, and gives a gated pod its first condition (its gate would keep it unready for ever)."""
    stamp = rfc3339(obs.now)
    for name, policies in sorted(obs.overlapping.items()):
        if not policies or policies[0] != obs.policy.name or name not in obs.pods:
            continue
        pod = obs.pods[name]
        message = f"selected by policies {', '.join(policies)}; none of them watches it"
        plan.events.append(EventIntent(pod_ref(pod), "OverlappingPolicies", message, "Warning"))
        first = first_condition(pod, "OverlappingPolicies", message, stamp)
        if first is not None and pod.running:
            plan.conditions.append(first)
