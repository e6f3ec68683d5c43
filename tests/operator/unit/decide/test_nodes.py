"""Node decisions: cordon on enough trips from enough pods; only undo what we did."""

from __future__ import annotations

import dataclasses

from circuitgate_devkit.cluster.plan_builders import NOW, node, pod
from circuitgate_operator.clock import rfc3339
from circuitgate_operator.decide.nodes import (
    CORDONED_AT,
    CORDONED_BY,
    KEEP_CORDONED,
    RELEASED_AT,
    RELEASED_BY,
    TAINTED,
    SeenEviction,
    Trip,
    decide_node_action,
    evictions_on,
)
from circuitgate_operator.model import Condition, NodeRemediation, NodeView, PodView, Taint
from circuitgate_operator.names import EVICTED_CONDITION_TYPE

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


def decide(n, trips=TRIPS, now=NOW, spec=SPEC, evicted=()):  # type: ignore[no-untyped-def]
    return decide_node_action(n, policy="ns/pol", spec=spec, trips=trips, now=now, evicted=evicted)


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


def test_ownership_comes_first_an_exclude_label_after_our_cordon_undoes_it_now() -> None:
    excluded = node(
        labels={**GPU, "circuitgate.io/exclude": "true"},
        unschedulable=True,
        taints=(SPEC.taint,),
        annotations=ours(**{TAINTED: str(SPEC.taint)}),
    )
    decision = decide(excluded, trips=TRIPS)  # trips still fresh: no cool-down wait
    assert decision.action == "uncordon"
    assert decision.change is not None and decision.change.taints == ()
    assert "exclude" in decision.reason


def test_an_admin_cordon_after_ours_makes_the_node_theirs() -> None:
    cordoned_at = NOW - 400
    again = node(
        labels=GPU,
        unschedulable=True,
        taints=(SPEC.taint,),
        annotations={
            CORDONED_BY: "ns/pol",
            CORDONED_AT: rfc3339(cordoned_at, precise=True),
            TAINTED: str(SPEC.taint),
        },
        cordoned_by_managers=(("circuitgate-operator", cordoned_at), ("kubectl", NOW - 100)),
    )
    decision = decide(again, trips=[])
    assert decision.action == "release"
    change = decision.change
    assert change is not None and change.unschedulable is None  # the cordon is theirs now
    assert change.taints == () and change.annotations[CORDONED_BY] is None
    # Our own write in the same second is not someone else's.
    ours_only = dataclasses.replace(
        again, cordoned_by_managers=(("circuitgate-operator", cordoned_at),)
    )
    assert decide(ours_only, trips=[]).action == "uncordon"


def test_an_admin_taint_keeps_its_time_added_through_our_cordon() -> None:
    admin = Taint("node.kubernetes.io/out-of-service", "", "NoExecute", "2027-01-01T00:00:00Z")
    decision = decide(node(labels=GPU, taints=(admin,)))
    assert decision.change is not None and decision.change.taints is not None
    assert decision.change.taints[0].to_json()["timeAdded"] == "2027-01-01T00:00:00Z"


def cordoned_by_us(**extra: str) -> NodeView:
    """A node this policy cordoned 200 s ago (cool-down 300 s)."""
    marks = ours(**{CORDONED_AT: rfc3339(NOW - 200, precise=True), **extra})
    return node(labels=GPU, unschedulable=True, taints=(SPEC.taint,), annotations=marks)


def test_an_admin_keep_cordoned_annotation_makes_the_node_theirs() -> None:
    kept = cordoned_by_us(**{KEEP_CORDONED: "true"})
    decision = decide(kept, trips=[], now=NOW + 900)  # past the cool-down: still not undone
    assert decision.action == "release"
    change = decision.change
    assert change is not None and change.unschedulable is None
    assert change.taints == () and change.annotations[CORDONED_BY] is None
    assert KEEP_CORDONED in decision.reason


def test_a_drain_after_our_cordon_makes_the_node_theirs() -> None:
    n = cordoned_by_us()
    before = [SeenEviction("x", NOW - 300)]  # before our cordon: not a drain of it
    assert decide(n, trips=[], evicted=before).action == "hold"
    drained = [SeenEviction("x", NOW - 100)]
    decision = decide(n, trips=[], evicted=drained)
    assert decision.action == "release" and "drain" in decision.reason
    assert decision.change is not None and decision.change.unschedulable is None


def evicted_pod(
    name: str,
    reason: str = "EvictionByEvictionAPI",
    node_name: str = "node-a",
    *,
    ours: bool = False,
) -> PodView:
    """A pod with a DisruptionTarget condition set at NOW; ``ours``: with our mark too."""
    disruption = Condition("DisruptionTarget", "True", reason, "", rfc3339(NOW))
    conditions = {"DisruptionTarget": disruption}
    if ours:
        mark = Condition(EVICTED_CONDITION_TYPE, "True", "BreakerTripped", "", rfc3339(NOW))
        conditions[EVICTED_CONDITION_TYPE] = mark
    return dataclasses.replace(pod(name, node=node_name), conditions=conditions)


def test_evictions_on_a_node_are_read_from_the_disruption_condition() -> None:
    pods = [
        evicted_pod("x"),
        evicted_pod("y", "PreemptionByScheduler"),
        evicted_pod("z", node_name="node-b"),
        pod("w"),
    ]
    assert evictions_on("node-a", pods) == [SeenEviction("x", NOW)]


def test_an_eviction_we_were_granted_is_ours_whoever_decides() -> None:
    """Marked once the API server granted it: no drain, whoever decides (a restarted
    operator, another replica). An eviction a budget refused leaves no mark, so a drain that
    evicts that pod later is someone else's."""
    pods = [evicted_pod("ours", ours=True), evicted_pod("refused-then-drained")]
    assert evictions_on("node-a", pods) == [SeenEviction("refused-then-drained", NOW)]


def test_a_release_mark_is_forgotten_once_the_trips_it_forgives_are_out_of_the_window() -> None:
    """``released-at`` forgives the trips already acted on; past the window there are none
    left to forgive, and the node goes back to the admin's state: nothing of ours on it."""
    uncordoned = cordoned_by_us()
    decision = decide(uncordoned, trips=[], now=NOW + 300)
    assert decision.action == "uncordon" and decision.change is not None
    marks = decision.change.annotations
    assert marks[RELEASED_BY] == "ns/pol"
    released = node(
        labels=GPU, annotations={RELEASED_AT: marks[RELEASED_AT], RELEASED_BY: "ns/pol"}
    )
    assert decide(released, trips=[], now=NOW + 300 + SPEC.window - 1).action == "none"
    forget = decide(released, trips=[], now=NOW + 300 + SPEC.window)
    assert forget.action == "forget" and forget.change is not None
    assert forget.change.annotations == {RELEASED_AT: None, RELEASED_BY: None}
    assert forget.change.unschedulable is None and forget.change.taints is None
    # Another policy's release is that policy's to forget.
    theirs = node(labels=GPU, annotations={RELEASED_AT: marks[RELEASED_AT], RELEASED_BY: "ns/b"})
    assert decide(theirs, trips=[], now=NOW + 10_000).action == "none"
