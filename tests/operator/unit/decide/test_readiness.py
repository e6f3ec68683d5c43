"""The readiness-gate condition from the circuit state."""

from __future__ import annotations

import pytest

from circuitgate_operator.decide.readiness import decide_readiness, same_condition

from .builders import pod


@pytest.mark.parametrize(
    ("state", "status", "reason"),
    [
        ("open", "False", "CircuitOpen"),
        ("forced_open", "False", "CircuitForcedOpen"),
        ("half_open", "True", "CircuitHalfOpen"),
        ("closed", "True", "CircuitClosed"),
        ("forced_closed", "True", "CircuitForcedClosed"),
    ],
)
def test_condition_follows_the_breaker(state: str, status: str, reason: str) -> None:
    wanted = decide_readiness(
        pod("p", condition="True"),
        {"state": state, "breaker": "gpu", "mayCloseAt": "2027-01-01T00:01:00Z"},
        "now",
    )
    assert wanted is not None
    assert (wanted.status, wanted.reason) == (status, reason)
    if state == "open":
        assert wanted.message == "breaker gpu is open until 2027-01-01T00:01:00Z"


def test_unknown_never_counts_as_closed_but_a_new_pod_gets_true() -> None:
    assert decide_readiness(pod("p", condition="False"), {"state": "unknown"}, "now") is None
    assert decide_readiness(pod("p", condition="True"), {"state": "unknown"}, "now") is None
    fresh = decide_readiness(pod("p"), {"state": "unknown"}, "now")
    assert fresh is not None and fresh.status == "True"


def test_transition_time_moves_only_when_the_status_does() -> None:
    current = pod("p", condition="True", reason="CircuitClosed")
    same = decide_readiness(current, {"state": "half_open"}, "later")
    assert same is not None and same.last_transition_time == "t0"
    flipped = decide_readiness(current, {"state": "open"}, "later")
    assert flipped is not None and flipped.last_transition_time == "later"
    assert not same_condition(current.gate_condition, flipped)
