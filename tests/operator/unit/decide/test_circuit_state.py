"""CircuitState status from readings, written only on change, and its Events."""

from __future__ import annotations

import dataclasses
from typing import Any

from circuitgate_devkit.cluster.plan_builders import (
    NOW,
    circuit_state,
    observe,
    pod,
    policy,
    reading,
    settle,
)
from circuitgate_operator.clock import parse_time, rfc3339
from circuitgate_operator.contract import unknown
from circuitgate_operator.decide.circuit_state import (
    STARTUP_GRACE_SECONDS,
    circuit_events,
    consumer_events,
    desired_circuit_state,
    startup_grace_ends,
    status_patch,
)
from circuitgate_operator.decide.intents import EventIntent, Plan
from circuitgate_operator.decide.plan import plan_policy
from circuitgate_operator.model import PodView, parse_pod


def test_an_unreachable_endpoint_keeps_the_last_known_counts_and_says_why() -> None:
    p = pod("p")
    opened = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "open", trips=3), previous=None, now="t1"
    )
    assert (
        opened["state"] == "open" and opened["trips"] == 3 and opened["lastTransitionTime"] == "t1"
    )
    lost = desired_circuit_state(
        pod=p, policy="pol",
        reading=unknown(opened["endpoint"]["url"], "refused", "connection refused"),
        previous=opened, now="t2",
    )  # fmt: skip
    assert lost["state"] == "unknown" and lost["trips"] == 3 and lost["lastTransitionTime"] == "t2"
    assert lost["endpoint"] == {
        "url": opened["endpoint"]["url"],
        "reachable": False,
        "reason": "connection refused",
    }


def test_the_same_reading_gives_the_same_status() -> None:
    p = pod("p")
    first = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "open"), previous=None, now="t1"
    )
    again = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "open"), previous=first, now="t9"
    )
    assert again == first
    assert status_patch(again, first) == {}


def test_status_patch_nulls_what_went_away() -> None:
    p = pod("p")
    opened = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "open"), previous=None, now="t1"
    )
    closed = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "closed"), previous=opened, now="t2"
    )
    patch = status_patch(closed, opened)
    assert patch["openedAt"] is None and patch["mayCloseAt"] is None and patch["state"] == "closed"
    assert "endpoint" not in patch


def test_events_for_each_state_change() -> None:
    p = pod("p")
    reasons = {
        (None, "open"): ["CircuitOpened"],
        ("closed", "open"): ["CircuitOpened"],
        ("open", "half_open"): ["CircuitHalfOpen"],
        ("half_open", "closed"): ["CircuitClosed"],
        ("closed", "unknown"): ["EndpointUnreachable"],
        ("closed", "forced_open"): ["CircuitOpened"],
        (None, "closed"): [],
        ("open", "open"): [],
    }
    for (before, after), expected in reasons.items():
        events = circuit_events(p, before, {"state": after, "breaker": "default"})
        assert [e.reason for e in events] == expected, (before, after)
        assert all(e.ref.kind == "Pod" and e.ref.uid == p.uid for e in events)
    warning = circuit_events(p, "closed", {"state": "open"})[0]
    assert warning.type == "Warning"


def unreachable_warnings(plan: Plan) -> list[EventIntent]:
    events = [*plan.events, *(e for w in plan.circuit_states for e in w.events)]
    return [e for e in events if e.reason == "EndpointUnreachable"]


def test_no_unreachable_warning_while_a_container_starts_then_one_past_the_grace() -> None:
    p = pod("p", started_at=NOW - 5)
    pol = policy()
    obs = observe(pol, [p], {p.uid: reading(p, "unknown")})
    plan = plan_policy(obs)
    assert [w.status["state"] for w in plan.circuit_states] == ["unknown"]
    assert unreachable_warnings(plan) == []
    obs = settle(obs, plan)
    assert unreachable_warnings(plan_policy(obs)) == []  # nothing new within the grace

    late = dataclasses.replace(obs, now=NOW - 5 + STARTUP_GRACE_SECONDS)
    plan = plan_policy(late)
    (warning,) = unreachable_warnings(plan)
    assert warning.type == "Warning" and "connection refused" in warning.message
    assert plan.circuit_states == []  # the Event costs no CircuitState write
    # The same Event each pass while the cause lasts: the loop posts it once.
    assert unreachable_warnings(plan_policy(late)) == [warning]


def test_no_unreachable_warning_for_a_pod_whose_container_has_not_started() -> None:
    p = pod("p", started_at=None)
    obs = observe(policy(), [p], {p.uid: reading(p, "unknown")}, now=NOW + 86400)
    assert unreachable_warnings(plan_policy(obs)) == []


def test_an_endpoint_lost_after_a_good_reading_warns_at_once() -> None:
    p = pod("p", started_at=NOW - 1)
    obs = observe(policy(), [p], {p.uid: reading(p, "closed")})
    obs = settle(obs, plan_policy(obs))
    plan = plan_policy(dataclasses.replace(obs, readings={p.uid: reading(p, "unknown")}))
    assert [e.type for e in unreachable_warnings(plan)] == ["Warning"]


def test_the_first_good_reading_after_a_start_is_no_news() -> None:
    p = pod("p", started_at=NOW - 5)
    obs = observe(policy(), [p], {p.uid: reading(p, "unknown")})
    obs = settle(obs, plan_policy(obs))
    plan = plan_policy(dataclasses.replace(obs, readings={p.uid: reading(p, "closed")}))
    assert [w.status["state"] for w in plan.circuit_states] == ["closed"]
    assert [e for w in plan.circuit_states for e in w.events] == []


def test_startup_grace_deadline() -> None:
    starting = pod("p", started_at=NOW - 5)
    assert startup_grace_ends(starting, NOW) == NOW - 5 + STARTUP_GRACE_SECONDS
    assert startup_grace_ends(starting, NOW + STARTUP_GRACE_SECONDS) is None
    assert startup_grace_ends(pod("q", started_at=None), NOW) is None


def worker_pod(*statuses: dict[str, Any]) -> PodView:
    """A pod created two hours ago whose container "worker" serves the endpoint's port."""
    containers = [
        {"name": s["name"], "ports": [{"containerPort": 8000}] if s["name"] == "worker" else []}
        for s in statuses
    ]
    return parse_pod(
        {
            "metadata": {
                "name": "w",
                "namespace": "ns",
                "uid": "u-w",
                "labels": {"app": "worker"},
                "creationTimestamp": rfc3339(NOW - 7200),
            },
            "spec": {"nodeName": "node-a", "containers": containers},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "containerStatuses": statuses},
        }
    )


def running(name: str, since: float, *, restarts: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "state": {"running": {"startedAt": rfc3339(since)}},
        "restartCount": restarts,
    }


def warned(p: PodView, *, watched_since: float | None = None) -> bool:
    states = {}
    if watched_since is not None:
        states[p.name] = dataclasses.replace(
            circuit_state(p, state="unknown"), created_at=watched_since
        )
    obs = observe(policy(), [p], {p.uid: reading(p, "unknown")}, states=states)
    return bool(unreachable_warnings(plan_policy(obs)))


def test_a_restarting_sidecar_does_not_rearm_the_workers_grace() -> None:
    p = worker_pod(running("worker", NOW - 3600), running("log-agent", NOW - 20))
    assert startup_grace_ends(p, NOW, port=8000) is None
    assert warned(p)


def test_without_a_container_serving_the_port_the_oldest_running_one_counts() -> None:
    p = worker_pod(running("app", NOW - 3600), running("log-agent", NOW - 20))
    assert startup_grace_ends(p, NOW, port=8000) is None
    assert warned(p)
    fresh = worker_pod(running("app", NOW - 5), running("log-agent", NOW - 2))
    assert startup_grace_ends(fresh, NOW, port=8000) == NOW - 5 + STARTUP_GRACE_SECONDS


def test_a_crash_looping_worker_warns_a_grace_after_the_pod_was_created() -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff"}}
    p = worker_pod({"name": "worker", "state": waiting, "restartCount": 4})
    assert warned(p)


def test_no_warning_while_the_worker_has_never_started() -> None:
    """A GPU image can take minutes to pull: an endpoint no container serves yet is no news."""
    waiting = {"waiting": {"reason": "ContainerCreating"}}
    p = worker_pod({"name": "worker", "state": waiting, "restartCount": 0})
    assert not warned(p)
    assert not warned(p, watched_since=NOW - 3600)
    assert startup_grace_ends(p, NOW, port=8000) is None
    started = worker_pod(running("worker", NOW - 5))
    assert not warned(started, watched_since=NOW - 3600)  # its first start: a full grace


def test_the_grace_ends_at_most_one_period_after_watching_began() -> None:
    """A worker restarting every minute would otherwise be in its grace for ever."""
    restarted = worker_pod(running("worker", NOW - 20, restarts=3))
    assert not warned(restarted)  # seen for the first time: its grace runs
    assert not warned(restarted, watched_since=NOW - 5)
    assert warned(restarted, watched_since=NOW - STARTUP_GRACE_SECONDS)
    ends = startup_grace_ends(restarted, NOW - 30, port=8000, watched_since=NOW - 40)
    assert ends == NOW - 40 + STARTUP_GRACE_SECONDS


def test_a_pod_without_container_statuses_starts_at_its_creation() -> None:
    """No kubelet reports on it (an API-only cluster)."""
    p = parse_pod({"metadata": {"creationTimestamp": "2027-01-15T08:00:00Z"}, "status": {}})
    assert p.created_at == parse_time("2027-01-15T08:00:00Z")
    assert startup_grace_ends(p, p.created_at) == p.created_at + STARTUP_GRACE_SECONDS


def test_a_healthy_worker_with_a_flapping_failure_counter_costs_no_writes() -> None:
    """What a user reads is the state, trips, the last change and why; a closed breaker's
    failure counter and every document's sequence number are not worth an API write."""
    p = pod("p", started_at=NOW - 600)
    obs = observe(policy(), [p], {p.uid: reading(p, "closed")})
    first = plan_policy(obs)
    assert len(first.circuit_states) == 1
    obs = settle(obs, first)
    writes = 0
    for n in range(100):
        flapping = dataclasses.replace(reading(p, "closed"), failures=n % 4, sequence=8 + n)
        plan = plan_policy(dataclasses.replace(obs, readings={p.uid: flapping}, now=NOW + n))
        writes += len(plan.circuit_states) + len(plan.conditions)
        obs = settle(obs, plan)
    assert writes == 0


def test_an_open_breaker_records_the_failures_that_opened_it() -> None:
    p = pod("p")
    opened = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "open"), previous=None, now="t1"
    )
    assert opened["failures"] == 5 and opened["sequence"] == 7
    closed = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "closed"), previous=opened, now="t2"
    )
    assert "failures" not in closed and closed["sequence"] == 7


CUDA = (("DeviceFault", None), *[("CudaError", "an illegal memory access was encountered")] * 3)


def test_the_exceptions_that_opened_the_breaker_are_kept_with_the_opening() -> None:
    p = pod("p")
    opened = desired_circuit_state(
        pod=p, policy="pol",
        reading=dataclasses.replace(reading(p, "open"), last_failures=CUDA),
        previous=None, now="t1",
    )  # fmt: skip
    assert opened["lastFailures"] == [
        {"type": "DeviceFault"},
        *[{"type": "CudaError", "message": "an illegal memory access was encountered"}] * 3,
    ]
    # Later failures (tasks that started before the trip) change nothing while it stays open:
    # no write per failure.
    later = dataclasses.replace(reading(p, "open"), last_failures=(("OSError", "gone"),))
    again = desired_circuit_state(pod=p, policy="pol", reading=later, previous=opened, now="t2")
    assert again == opened
    reopened = desired_circuit_state(
        pod=p, policy="pol",
        reading=dataclasses.replace(later, opened_at="2027-01-15T09:00:00Z"),
        previous=opened, now="t3",
    )  # fmt: skip
    assert reopened["lastFailures"] == [{"type": "OSError", "message": "gone"}]
    closed = desired_circuit_state(
        pod=p, policy="pol", reading=reading(p, "closed"), previous=reopened, now="t4"
    )
    assert "lastFailures" not in closed and status_patch(closed, reopened)["lastFailures"] is None


def test_the_opened_event_names_the_cause_as_people_say_it() -> None:
    p = pod("p")
    status = desired_circuit_state(
        pod=p, policy="pol",
        reading=dataclasses.replace(reading(p, "open", trips=2), last_failures=CUDA),
        previous=None, now="t1",
    )  # fmt: skip
    (event,) = circuit_events(p, "closed", status)
    assert event.message.startswith(
        "breaker default opened after 3 x CudaError: an illegal memory access was encountered"
        " (trips 2, 5 consecutive failures)"
    )
    hidden = dataclasses.replace(reading(p, "open"), last_failures=(("CudaError", None),))
    status = desired_circuit_state(pod=p, policy="pol", reading=hidden, previous=None, now="t1")
    assert "opened after 1 x CudaError (trips" in circuit_events(p, "closed", status)[0].message


def test_the_consumer_status_is_recorded_and_its_trouble_makes_events() -> None:
    p = pod("p")
    stalled = dataclasses.replace(reading(p, "closed"), consumer="stalled")
    status = desired_circuit_state(pod=p, policy="pol", reading=stalled, previous=None, now="t1")
    assert status["consumer"] == "stalled"
    lost = desired_circuit_state(
        pod=p, policy="pol", reading=unknown("u", "refused", "refused"), previous=status, now="t2"
    )
    assert lost["consumer"] == "stalled"  # remembered, as the counts are
    assert [e.reason for e in consumer_events(p, None, "stalled")] == ["ConsumerStalled"]
    assert [e.type for e in consumer_events(p, "consuming", "disconnected")] == ["Warning"]
    assert [e.reason for e in consumer_events(p, "stalled", "consuming")] == ["ConsumerResumed"]
    assert consumer_events(p, None, "consuming") == []  # a first good reading is no news
    assert consumer_events(p, "stalled", "stalled") == []
    assert consumer_events(p, "stalled", None) == []  # a worker that no longer says
