"""CircuitState status from readings, written only on change, and its Events."""

from __future__ import annotations

from circuitgate_operator.contract import unknown
from circuitgate_operator.decide.circuit_state import (
    circuit_events,
    desired_circuit_state,
    status_patch,
)

from .builders import pod, reading


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
