"""Node decisions: cordon on enough trips from enough pods; only undo what we did."""

from __future__ import annotations

from circuitgate_operator.clock import rfc3339
from circuitgate_operator.decide.nodes import (
    CORDONED_AT,
    CORDONED_BY,
    RELEASED_AT,
    TAINTED,
    Trip,
    decide_node_action,
)
from circuitgate_operator.model import NodeRemediation, Taint

from .builders import NOW, node

SPEC = NodeRemediation(
    enabled=True,
    node_selector=(("nvidia.com/gpu.present", "true"),),
    trip_threshold=3,
    window=600,
    min_distinct_pods=2,
    taint=Taint("circuitgate.io/tripped", "gpu", "NoSchedule"),
    cooldown=300,
)
GPU = {"nvidia.com/gpu.present": "true"}
TRIPS = [Trip("a", NOW - 30), Trip("b", NOW - 20), Trip("a", NOW - 10)]


def decide(n, trips=TRIPS, now=NOW, spec=SPEC):  # type: ignore[no-untyped-def]
    return decide_node_action(n, policy="ns/pol", spec=spec, trips=trips, now=now)


def test_cordons_and_taints_at_the_threshold_from_distinct_pods() -> None:
    other_taint = Taint("nvidia.com/gpu", "", "NoSchedule")
    decision = decide(node(labels=GPU, taints=(other_taint,)))
    assert decision.action == "cordon"
    change = decision.change
    assert change is not None and change.unschedulable is True
    assert change.taints == (other_taint, SPEC.taint)
    assert change.annotations[CORDONED_BY] == "ns/pol"
    assert change.annotations[TAINTED] == "circuitgate.io/tripped=gpu:NoSchedule"
    assert change.resource_version == "10"


def test_not_enough_trips_pods_or_time() -> None:
    assert decide(node(labels=GPU), trips=TRIPS[:2]).action == "none"
    one_pod = [Trip("a", NOW - 30), Trip("a", NOW - 20), Trip("a", NOW - 10)]
    assert decide(node(labels=GPU), trips=one_pod).action == "none"  # a poison message
    old = [Trip("a", NOW - 900), *TRIPS[1:]]
    assert decide(node(labels=GPU), trips=old).action == "none"


def test_never_touches_excluded_unselected_or_admin_cordoned_nodes() -> None:
    excluded = node(labels={**GPU, "circuitgate.io/exclude": "true"})
    assert decide(excluded).action == "none"
    assert decide(node(labels={})).action == "none"
    assert decide(node(labels=GPU, unschedulable=True)).action == "none"
    disabled = NodeRemediation(enabled=False)
    assert decide(node(labels=GPU), spec=disabled).action == "none"
    other = node(labels=GPU, unschedulable=True, annotations={CORDONED_BY: "ns/other"})
    assert decide(other).action == "none"


def test_an_existing_taint_with_our_key_is_left_alone() -> None:
    theirs = Taint("circuitgate.io/tripped", "", "NoSchedule")
    decision = decide(node(labels=GPU, taints=(theirs,)))
    assert decision.change is not None
    assert decision.change.taints == (theirs,)
    assert TAINTED not in decision.change.annotations


def ours(**extra: str) -> dict[str, str]:
    return {
        CORDONED_BY: "ns/pol",
        CORDONED_AT: rfc3339(NOW - 100),
        TAINTED: "circuitgate.io/tripped=gpu:NoSchedule",
        **extra,
    }


def test_holds_then_undoes_only_its_own_cordon_and_taint_after_the_cool_down() -> None:
    admin_taint = Taint("maintenance", "", "NoSchedule")
    cordoned = node(
        labels=GPU, unschedulable=True, annotations=ours(), taints=(admin_taint, SPEC.taint)
    )
    assert decide(cordoned, trips=[Trip("a", NOW - 50)]).action == "hold"
    decision = decide(cordoned, trips=[Trip("a", NOW - 50)], now=NOW + 300)
    assert decision.action == "uncordon"
    assert decision.change is not None
    assert decision.change.unschedulable is False
    assert decision.change.taints == (admin_taint,)
    assert decision.change.annotations[RELEASED_AT] == rfc3339(NOW + 300, precise=True)
    assert all(
        decision.change.annotations[key] is None for key in (CORDONED_BY, CORDONED_AT, TAINTED)
    )


def test_an_admin_uncordon_is_respected_until_the_next_incident() -> None:
    uncordoned = node(labels=GPU, unschedulable=False, annotations=ours(), taints=(SPEC.taint,))
    decision = decide(uncordoned)
    assert decision.action == "release"
    assert decision.change is not None and decision.change.unschedulable is None
    assert decision.change.annotations[RELEASED_AT] == rfc3339(NOW, precise=True)
    released = node(labels=GPU, annotations={RELEASED_AT: rfc3339(NOW + 0.5, precise=True)})
    assert decide(released, now=NOW + 1).action == "none"  # old trips are forgiven
    assert decide(released, trips=[*TRIPS, Trip("a", NOW + 0.4)], now=NOW + 1).action == "none"
    later = [Trip("c", NOW + 5), Trip("d", NOW + 6), Trip("c", NOW + 7)]
    assert decide(released, trips=TRIPS + later, now=NOW + 8).action == "cordon"
