"""The readiness-gate condition from the circuit state."""

from __future__ import annotations

import dataclasses

import pytest

from circuitgate_devkit.cluster.plan_builders import (
    NOW,
    circuit_state,
    observe,
    pod,
    policy,
    reading,
)
from circuitgate_operator.clock import rfc3339
from circuitgate_operator.contract import unknown
from circuitgate_operator.decide.intents import Plan
from circuitgate_operator.decide.plan import plan_policy
from circuitgate_operator.decide.readiness import (
    STALE_OPEN_SECONDS,
    decide_readiness,
    open_evidence_ends,
    same_condition,
)


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


def conditions(plan: Plan) -> list[tuple[str, str, str]]:
    return [(w.pod, w.condition.status, w.condition.reason) for w in plan.conditions]


def test_an_unreadable_endpoint_holds_a_pod_unready_only_until_its_open_period_ends() -> None:
    p = pod("p", condition="False", reason="CircuitOpen")
    recorded = circuit_state(
        p, state="open", mayCloseAt=rfc3339(NOW + 10), lastTransitionTime=rfc3339(NOW - 5)
    )
    gone = {p.uid: unknown(reading(p).url, "refused", "connection refused")}
    obs = observe(policy(), [p], gone, states={p.name: recorded})
    assert conditions(plan_policy(obs)) == []  # unknown is no evidence of a recovery
    later = dataclasses.replace(obs, now=NOW + 10)
    assert conditions(plan_policy(later)) == [("p", "True", "CircuitgateReleased")]


def test_a_stale_open_state_read_after_a_restart_waits_for_the_first_answer() -> None:
    p = pod("p", condition="False", reason="CircuitOpen")
    recorded = circuit_state(
        p, state="open", mayCloseAt=rfc3339(NOW - 60), lastTransitionTime=rfc3339(NOW - 120)
    )
    obs = observe(policy(), [p], {}, states={p.name: recorded})
    pending = dataclasses.replace(obs, first_read_pending=frozenset({p.uid}))
    assert conditions(plan_policy(pending)) == []
    assert conditions(plan_policy(obs)) == [("p", "True", "CircuitgateReleased")]
    # A breaker that still answers open is evidence, whatever its clock says.
    still = dataclasses.replace(obs, readings={p.uid: reading(p, "open", opened_at="x")})
    assert [status for _, status, _ in conditions(plan_policy(still))] in ([], ["False"])


def test_a_forced_open_state_that_names_no_end_stays_evidence_for_a_while() -> None:
    p = pod("p", condition="False", reason="CircuitForcedOpen")
    recorded = circuit_state(p, state="unknown", lastTransitionTime=rfc3339(NOW))
    gone = {p.uid: unknown(reading(p).url, "refused", "connection refused")}
    obs = observe(policy(), [p], gone, states={p.name: recorded})
    assert open_evidence_ends(recorded.status) == NOW + STALE_OPEN_SECONDS
    assert conditions(plan_policy(dataclasses.replace(obs, now=NOW + 1))) == []
    later = dataclasses.replace(obs, now=NOW + STALE_OPEN_SECONDS)
    assert conditions(plan_policy(later)) == [("p", "True", "CircuitgateReleased")]
