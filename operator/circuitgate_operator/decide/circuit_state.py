"""The CircuitState each watched pod should have, given its last reading, and the Events its
change means; the policy's CircuitStates of pods it no longer watches go."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..clock import rfc3339
from ..contract import TRIPPED_STATES, BreakerState, Reading
from ..model import ContainerView, PodView
from .intents import CircuitStateDelete, CircuitStateWrite, EventIntent, Plan, pod_ref
from .memo import PlanMemo
from .observation import PolicyObservation
from .outliers import Deviation, Verdict, outlier_event_message, outlier_status, verdict_of
from .readiness import restore
from .selection import resolve_port

__all__ = (
    "STARTUP_GRACE_SECONDS",
    "circuit_events",
    "consumer_events",
    "desired_circuit_state",
    "failure_summary",
    "plan_circuit_states",
    "plan_orphans",
    "startup_grace_ends",
    "status_patch",
)

# How long a worker's endpoint may refuse after its container started, before an endpoint
# that has never answered is worth a Warning: a Celery app takes a while to import and start.
STARTUP_GRACE_SECONDS = 60.0

# Carried over from the last good reading while the endpoint cannot be read: an unreachable
# worker has not forgotten its trips.
_REMEMBERED = (
    "breaker", "failures", "lastFailures", "trips", "openedAt", "mayCloseAt", "consumptionPaused",
    "consumer",
)  # fmt: skip
_FAILURES_SHOWN = 4


def desired_circuit_state(
    *,
    pod: PodView,
    policy: str,
    reading: Reading,
    previous: Mapping[str, Any] | None,
    now: str,
    outlier: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status to record: only what a user reads (state, trips, the last change and why),
    so a healthy worker costs no writes. ``failures`` are those that opened the breaker and
    ``lastFailures`` their exceptions, both absent while it is closed (a healthy worker's
    counter moves with every task); ``sequence`` is the document's at the last change
    recorded, never a change by itself. Keys with no value are left out rather than set to
    null, so the stored object and this dict compare equal when nothing changed. ``outlier``
    is the pod's deviation from its peers (`outliers.outlier_status`), when it deviates."""
    previous = previous or {}
    status: dict[str, Any] = {"pod": pod.name, "policy": policy, "state": reading.state}
    if pod.node_name:
        status["node"] = pod.node_name
    if reading.reachable:
        fresh = {
            "breaker": reading.breaker,
            "trips": reading.trips,
            "openedAt": reading.opened_at,
            "mayCloseAt": reading.may_close_at,
            "consumptionPaused": reading.consumption_paused,
            "consumer": reading.consumer,
        }
        status.update({key: value for key, value in fresh.items() if value is not None})
        status.update(_opening(reading, previous))
        if outlier is not None:
            status["outlier"] = dict(outlier)
    else:
        status.update({key: previous[key] for key in _REMEMBERED if key in previous})
    same_state = previous.get("state") == reading.state and previous.get("lastTransitionTime")
    status["lastTransitionTime"] = previous["lastTransitionTime"] if same_state else now
    status["endpoint"] = {"url": reading.url, "reachable": reading.reachable}
    if reading.reason:
        status["endpoint"]["reason"] = reading.reason[:1024]
    unchanged = {k: v for k, v in previous.items() if k != "sequence"} == status
    sequence = previous.get("sequence") if unchanged or not reading.reachable else reading.sequence
    if sequence is not None:
        status["sequence"] = sequence
    return status


def _opening(reading: Reading, previous: Mapping[str, Any]) -> dict[str, Any]:
    """What opened the breaker: the failures in a row and their exceptions (newest last), read
    with its opening and kept while it stays open; nothing while it is not tripped."""
    if reading.state not in TRIPPED_STATES:
        return {}
    same_opening = previous.get("state") in TRIPPED_STATES and (
        previous.get("openedAt") == reading.opened_at
    )
    if same_opening and isinstance(previous.get("failures"), int):
        return {key: previous[key] for key in ("failures", "lastFailures") if key in previous}
    causes = [
        {"type": kind[:128], **({"message": message[:1024]} if message else {})}
        for kind, message in reading.last_failures[-_FAILURES_SHOWN:]
    ]
    return {"failures": reading.failures, **({"lastFailures": causes} if causes else {})}


def failure_summary(causes: Sequence[Mapping[str, Any]]) -> str:
    """The newest cause and how many in a row before it were the same, as people say it:
    ``3 x CudaError: an illegal memory access was encountered``."""
    if not causes:
        return ""
    newest = causes[-1]
    repeats = 0
    for cause in reversed(causes):
        if (cause.get("type"), cause.get("message")) != (newest.get("type"), newest.get("message")):
            break
        repeats += 1
    said = f"{newest.get('type', '?')}" + (
        f": {newest['message']}" if newest.get("message") else ""
    )
    return f"{repeats} x {said}"


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


def _ever_read(status: Mapping[str, Any] | None) -> bool:
    """Whether a CircuitState carries what a good reading told (kept while unreachable)."""
    return status is not None and any(key in status for key in _REMEMBERED)


def _workers(pod: PodView, port: int | None) -> list[ContainerView]:
    """The container declaring the endpoint's port if one does, else all of them (a sidecar
    restarting must not re-arm the grace: the oldest start counts)."""
    serving = [c for c in pod.containers if port is not None and port in c.ports]
    return serving or list(pod.containers)


def _grace_end(pod: PodView, port: int | None, watched_since: float | None) -> float | None:
    """A grace period after the worker started. After a restart it ends at most one period
    after we began watching the pod (``watched_since``), so a worker restarting every minute
    is never in its grace for ever, and while the restarted worker does not run it counts
    from the pod's creation (a crash loop must not hide a dead endpoint). None while the
    worker has never run: an image still pulling is no news."""
    workers = _workers(pod, port)
    starts = [c.started_at for c in workers if c.started_at is not None]
    restarted = any(c.restarts for c in workers)
    if not starts and workers and not restarted:
        return None
    candidates = [min(starts, default=pod.created_at)]
    if restarted:
        candidates.append(watched_since)
    known = [t for t in candidates if t is not None]
    return min(known) + STARTUP_GRACE_SECONDS if known else None


def startup_grace_ends(
    pod: PodView, now: float, *, port: int | None = None, watched_since: float | None = None
) -> float | None:
    """When the pod's startup grace ends, if it has not yet."""
    ends = _grace_end(pod, port, watched_since)
    return ends if ends is not None and now < ends else None


def _never_answered(
    pod: PodView,
    status: Mapping[str, Any],
    now: float,
    *,
    port: int | None,
    watched_since: float | None,
) -> list[EventIntent]:
    """The Warning for an endpoint that has not answered since its container started, once the
    grace is over; repeated each pass while it lasts (the loop posts a plan's Event once)."""
    ends = _grace_end(pod, port, watched_since)
    if ends is None or now < ends:
        return []
    endpoint = status.get("endpoint") or {}
    message = (
        f"{endpoint.get('url', '?')}: {endpoint.get('reason', 'no usable answer')}; "
        "no answer since the container started"
    )
    return [EventIntent(pod_ref(pod), "EndpointUnreachable", message, "Warning")]


def circuit_events(
    pod: PodView, previous_state: str | None, status: Mapping[str, Any]
) -> list[EventIntent]:
    """Events for a change of state (none when the state did not change). ``previous_state``
    is None when no good reading was recorded before: a first unknown is not news yet (see
    `_never_answered`), and neither is a first closed."""
    state = status["state"]
    if state == previous_state or (previous_state is None and state == BreakerState.UNKNOWN):
        return []
    ref = pod_ref(pod)
    breaker = status.get("breaker") or "?"
    if state == BreakerState.OPEN:
        until = status.get("mayCloseAt")
        causes = failure_summary(status.get("lastFailures") or ())
        message = (
            f"breaker {breaker} opened"
            + (f" after {causes}" if causes else "")
            + f" (trips {status.get('trips', 0)}, {status.get('failures', 0)} consecutive failures)"
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


_CONSUMER_TROUBLE = {
    "stalled": (
        "ConsumerStalled",
        "the worker's consumer is stalled: its event loop has not ticked, or a broker poll has"
        " gone unanswered, for circuitgate_stall_seconds",
    ),
    "disconnected": (
        "BrokerDisconnected",
        "the worker lost its broker connection and is re-making it",
    ),
}


def consumer_events(pod: PodView, before: str | None, now: str | None) -> list[EventIntent]:
    """A Warning when the worker's consumer stalls or loses its broker, a Normal Event when
    it consumes again; nothing for a worker that does not say (``now`` None)."""
    if now == before or now is None:
        return []
    if now in _CONSUMER_TROUBLE:
        reason, message = _CONSUMER_TROUBLE[now]
        return [EventIntent(pod_ref(pod), reason, message, "Warning")]
    if before in _CONSUMER_TROUBLE and now in ("consuming", "paused"):
        return [EventIntent(pod_ref(pod), "ConsumerResumed", f"the worker's consumer is {now}")]
    return []


def plan_circuit_states(
    plan: Plan,
    obs: PolicyObservation,
    matched: Sequence[PodView],
    memo: PlanMemo | None = None,
    deviations: Mapping[str, tuple[Deviation, ...]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Plan the watched pods' CircuitStates; return each one's status as it will be (none for a
    pod that has no state yet). ``deviations``: how each pod (by uid) deviates from its peers;
    one left out keeps what was recorded of it (`outliers.outlier_status`)."""
    stamp = rfc3339(obs.now)
    states: dict[str, dict[str, Any]] = {}
    deviations = deviations or {}
    for pod in matched:
        judged = deviations.get(pod.uid)
        if memo is None:
            status = _plan_circuit_state(plan, obs, pod, stamp, judged)
        else:
            inputs = (pod, obs.circuit_states.get(pod.name), obs.reading(pod), judged)
            status = memo.circuit_states.decide(
                plan,
                pod.uid,
                inputs,
                _timeless,
                _plan_circuit_state,
                plan,
                obs,
                pod,
                stamp,
                judged,
            )
        if status is not None:
            states[pod.name] = status
    return states


def _timeless(_: object, status: Mapping[str, Any] | None) -> bool:
    """Whether a pass that wrote nothing for this status would write nothing at any time: all
    but a pod never read, whose Warning waits for the clock, and a deviating one, which the
    clock makes an outlier."""
    if status is not None and verdict_of(status) == Verdict.DEVIATING:
        return False
    return (
        status is None
        or status.get("state", BreakerState.UNKNOWN) != BreakerState.UNKNOWN
        or _ever_read(status)
    )


def _plan_circuit_state(
    plan: Plan,
    obs: PolicyObservation,
    pod: PodView,
    stamp: str,
    deviations: tuple[Deviation, ...] | None,
) -> dict[str, Any] | None:
    observed = obs.circuit_states.get(pod.name)
    if observed is not None and (
        (observed.owner_uid and observed.owner_uid != pod.uid)
        or observed.policy != obs.policy.label
    ):
        # Left by an earlier pod of the same name (the garbage collector may be slower) or
        # by another policy: remove it, and write ours once it is gone.
        plan.circuit_state_deletes.append(CircuitStateDelete(pod.namespace, pod.name))
        return None
    reading = obs.reading(pod)
    detection = obs.policy.spec.outliers
    if reading is None:
        if observed is None or not observed.status:
            return None
        # What was recorded, until the endpoint answers; an outlier only while detection is on.
        kept = dict(observed.status)
        if not detection.enabled:
            kept.pop("outlier", None)
        return kept
    previous = observed.status if observed is not None else None
    outlier = (
        outlier_status(pod.uid, deviations, (previous or {}).get("outlier"), detection, obs.now)
        if detection.enabled
        else None
    )
    status = desired_circuit_state(
        pod=pod,
        policy=obs.policy.name,
        reading=reading,
        previous=previous,
        now=stamp,
        outlier=outlier,
    )
    if status["state"] == BreakerState.UNKNOWN and not _ever_read(status):
        plan.events.extend(
            _never_answered(
                pod,
                status,
                obs.now,
                port=resolve_port(pod, obs.policy.spec.port),
                watched_since=observed.created_at if observed is not None else None,
            )
        )
    if observed is None or dict(observed.status) != status:
        before = previous.get("state") if previous is not None and _ever_read(previous) else None
        events = circuit_events(pod, before, status)
        events += consumer_events(pod, (previous or {}).get("consumer"), status.get("consumer"))
        events += _outlier_events(pod, previous or {}, status, obs)
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


def _outlier_events(
    pod: PodView, previous: Mapping[str, Any], status: Mapping[str, Any], obs: PolicyObservation
) -> list[EventIntent]:
    """``OutlierDetected`` when the pod's deviation has lasted long enough, ``OutlierCleared``
    when an outlier's deviation is over."""
    was, now = verdict_of(previous) == Verdict.OUTLIER, verdict_of(status) == Verdict.OUTLIER
    if now and not was:
        message = outlier_event_message(status["outlier"], obs.policy.spec.outliers)
        return [EventIntent(pod_ref(pod), "OutlierDetected", message, "Warning")]
    if was and not now:
        return [EventIntent(pod_ref(pod), "OutlierCleared", "no longer an outlier among its peers")]
    return []


def plan_orphans(plan: Plan, obs: PolicyObservation, matched: Sequence[PodView]) -> None:
    """CircuitStates of this policy whose pod it no longer watches: give the pod's condition
    back, and only once it is back (a restore held back by a pause or refused by the API
    server is tried again) remove the state, the only record that the pod is ours to restore.
    A pod another policy watches now is that policy's: its state just goes."""
    stamp = rfc3339(obs.now)
    watched = {pod.name for pod in matched}
    label = obs.policy.label
    orphans = [n for n, s in obs.circuit_states.items() if s.policy == label and n not in watched]
    for name in sorted(orphans):  # sorted once filtered: there are few, of many
        state = obs.circuit_states[name]
        pod = obs.pods.get(name)
        if pod is not None and pod.running and name not in obs.watched_elsewhere:
            write = restore(pod, stamp, "no longer watched by policy " + obs.policy.name)
            if write is not None:
                plan.conditions.append(write)
                continue
        plan.circuit_state_deletes.append(CircuitStateDelete(state.namespace, name))
    # A pod no policy watches, with no CircuitState (its creation failed while the mark
    # landed: found by the model check) would keep our False for good: give it back too.
    unwatched = [
        name
        for name in obs.pods
        if name not in watched
        and name not in obs.watched_elsewhere
        and name not in obs.circuit_states
    ]
    for name in sorted(unwatched):
        pod = obs.pods[name]
        if pod.running:
            write = restore(pod, stamp, "watched by no policy")
            if write is not None:
                plan.conditions.append(write)
