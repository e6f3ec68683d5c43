"""A policy's whole reconciliation as a pure function: caps, storm, pause, dry run, orphans,
and the property that matters most for the API server: a settled cluster plans no writes."""

from __future__ import annotations

import dataclasses
from typing import Any

from circuitgate_devkit.cluster.plan_builders import (
    NOW,
    circuit_state,
    node,
    observe,
    pod,
    policy,
    reading,
    settle,
)
from circuitgate_operator.clock import rfc3339
from circuitgate_operator.decide.cleanup import plan_cleanup
from circuitgate_operator.decide.intents import Plan
from circuitgate_operator.decide.nodes import (
    CORDONED_AT,
    CORDONED_BY,
    RELEASED_AT,
    RELEASED_BY,
    Trip,
)
from circuitgate_operator.decide.plan import plan_policy
from circuitgate_operator.model import Condition, PodView


def unready(plan: Plan) -> list[str]:
    """Pods the plan newly marks unready."""
    return sorted(w.pod for w in plan.conditions if w.marks_unready)


def writes(plan: Plan) -> int:
    return (
        len(plan.conditions)
        + len(plan.circuit_states)
        + len(plan.circuit_state_deletes)
        + len(plan.nodes)
        + len(plan.evictions)
        + (plan.policy_status is not None)
    )


def fleet(n: int, **kwargs: Any) -> list[PodView]:
    return [pod(f"w{i}", **kwargs) for i in range(n)]


def test_new_pods_get_their_condition_and_state_then_nothing_more_is_written() -> None:
    pods = fleet(4)
    obs = observe(policy(), pods, {p.uid: reading(p) for p in pods})
    plan = plan_policy(obs)
    assert sorted(w.pod for w in plan.conditions) == ["w0", "w1", "w2", "w3"]
    assert all(w.condition.status == "True" for w in plan.conditions)
    assert all(w.create for w in plan.circuit_states) and len(plan.circuit_states) == 4
    assert plan.policy_status is not None
    assert plan.policy_status.status["matchedPods"] == 4
    settled = settle(obs, plan)
    assert writes(plan_policy(settled)) == 0
    assert writes(plan_policy(dataclasses.replace(settled, now=NOW + 3600))) == 0


def test_a_trip_marks_the_pod_unready_with_events_and_recovers() -> None:
    pods = fleet(4)
    obs = settle(
        *(lambda o: (o, plan_policy(o)))(observe(policy(), pods, {p.uid: reading(p) for p in pods}))
    )
    tripped = {**obs.readings, pods[0].uid: reading(pods[0], "open", trips=1)}
    plan = plan_policy(dataclasses.replace(obs, readings=tripped))
    assert unready(plan) == ["w0"]
    (write,) = [w for w in plan.conditions]
    assert write.condition.reason == "CircuitOpen"
    assert [e.reason for e in write.events] == ["PodMarkedUnready"]
    (state,) = plan.circuit_states
    assert [e.reason for e in state.events] == ["CircuitOpened"]
    assert plan.policy_status is not None
    assert plan.policy_status.status["unreadyPods"] == 1
    assert plan.policy_status.status["openCircuits"] == 1
    opened = settle(dataclasses.replace(obs, readings=tripped), plan)
    assert writes(plan_policy(opened)) == 0
    closed = {**tripped, pods[0].uid: reading(pods[0], "closed", trips=1)}
    plan = plan_policy(dataclasses.replace(opened, readings=closed))
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w0", "True")]
    assert [e.reason for e in plan.conditions[0].events] == ["PodMarkedReady"]


def test_the_unready_cap_is_never_overshot_and_counts_pods_already_held() -> None:
    pods = fleet(10, condition="True")
    pol = policy(safety={"maxUnreadyPods": 3, "stormThreshold": "100%"})
    readings = {p.uid: reading(p, "open", trips=1) for p in pods[:5]}
    readings |= {p.uid: reading(p) for p in pods[5:]}
    plan = plan_policy(observe(pol, pods, readings))
    assert len(unready(plan)) == 3
    assert plan.suppressed[("mark_unready", "cap")] == 2
    assert plan.policy_status is not None
    capped = {c["type"]: c for c in plan.policy_status.status["conditions"]}["Capped"]
    assert capped["status"] == "True"
    assert "SafetyCapReached" in [e.reason for e in plan.events]
    # Two already held unready by us: only one more fits.
    held = [pod(f"w{i}", condition="False", reason="CircuitOpen") for i in range(2)]
    plan = plan_policy(observe(pol, held + pods[2:], readings))
    assert len(unready(plan)) == 1


def test_a_new_pod_held_back_by_a_cap_or_a_storm_still_gets_true() -> None:
    pol = policy(safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
    pods = fleet(4)  # no condition yet
    readings = {p.uid: reading(p, "open") for p in pods[:2]} | {p.uid: reading(p) for p in pods[2:]}
    plan = plan_policy(observe(pol, pods, readings))
    statuses = {w.pod: (w.condition.status, w.condition.reason) for w in plan.conditions}
    assert statuses == {
        "w0": ("False", "CircuitOpen"),
        "w1": ("True", "SafetyCapReached"),
        "w2": ("True", "CircuitClosed"),
        "w3": ("True", "CircuitClosed"),
    }


def test_percentage_caps_round_down() -> None:
    pods = fleet(7, condition="True")
    pol = policy(safety={"maxUnreadyPods": "25%", "stormThreshold": "100%"})
    readings = {p.uid: reading(p, "open") for p in pods[:3]} | {p.uid: reading(p) for p in pods[3:]}
    assert len(unready(plan_policy(observe(pol, pods, readings)))) == 1  # 25% of 7 = 1.75


def test_a_storm_takes_no_new_action_but_still_restores() -> None:
    pods = [pod("w0", condition="False", reason="CircuitOpen"), *fleet(4, condition="True")[1:]]
    pol = policy(safety={"maxUnreadyPods": "100%", "stormThreshold": "50%"})
    readings = {pods[0].uid: reading(pods[0], "closed")}
    readings |= {p.uid: reading(p, "open") for p in pods[1:]}
    plan = plan_policy(observe(pol, pods, readings))
    assert unready(plan) == []
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w0", "True")]
    assert plan.suppressed[("mark_unready", "storm")] == 3
    assert "SuspectedSharedOutage" in [e.reason for e in plan.events]
    assert plan.policy_status is not None
    storm = {c["type"]: c for c in plan.policy_status.status["conditions"]}
    assert storm["SharedOutageSuspected"]["status"] == "True"


def test_pause_keeps_observing_but_changes_no_pod() -> None:
    pods = fleet(4, condition="True")
    pol = policy(annotations={"circuitgate.io/paused": "true"})
    readings = {pods[0].uid: reading(pods[0], "open")} | {p.uid: reading(p) for p in pods[1:]}
    plan = plan_policy(observe(pol, pods, readings))
    assert plan.conditions == []
    assert len(plan.circuit_states) == 4  # observation stays current
    assert plan.suppressed[("mark_unready", "paused")] == 1


def test_dry_run_only_says_what_it_would_do() -> None:
    pods = fleet(4, condition="True")
    pol = policy(dryRun=True)
    readings = {pods[0].uid: reading(pods[0], "open")} | {p.uid: reading(p) for p in pods[1:]}
    plan = plan_policy(observe(pol, pods, readings))
    assert plan.conditions == []
    (event,) = [e for e in plan.events if e.reason == "PodMarkedUnready"]
    fresh = pod("new")
    plan = plan_policy(observe(pol, [fresh], {fresh.uid: reading(fresh)}))
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("new", "True")]
    assert event.message.startswith("dry run: would mark unready")


def test_a_pod_without_the_gate_gets_a_warning_not_a_condition() -> None:
    p = pod("w0", gated=False)
    plan = plan_policy(observe(policy(), [p], {p.uid: reading(p, "open")}))
    assert plan.conditions == []
    (warning,) = [e for e in plan.events if e.reason == "ReadinessGateMissing"]
    assert warning.type == "Warning" and warning.ref.name == "w0"


def test_pods_no_longer_selected_are_restored_and_their_states_removed() -> None:
    gone = pod("w0", condition="False", reason="CircuitOpen", labels={"app": "web"})
    states = {"w0": circuit_state(gone, state="open")}
    obs = observe(policy(), [gone], {}, states=states)
    plan = plan_policy(obs)
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w0", "True")]
    # The state goes once the restore landed: it is the record that the pod is ours to restore.
    assert plan.circuit_state_deletes == []
    plan = plan_policy(settle(obs, plan))
    assert plan.conditions == []
    assert [d.name for d in plan.circuit_state_deletes] == ["w0"]


def test_a_paused_policy_keeps_the_state_of_a_relabelled_pod_until_it_can_restore_it() -> None:
    gone = pod("w0", condition="False", reason="CircuitOpen", labels={"app": "web"})
    states = {"w0": circuit_state(gone, state="open")}
    paused = policy(annotations={"circuitgate.io/paused": "true"})
    plan = plan_policy(observe(paused, [gone], {}, states=states))
    assert plan.conditions == [] and plan.circuit_state_deletes == []
    plan = plan_policy(observe(policy(), [gone], {}, states=states))
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w0", "True")]


def test_a_pod_another_policy_watches_now_is_not_restored_by_the_old_one() -> None:
    moved = pod("w0", condition="False", reason="CircuitOpen", labels={"app": "web"})
    obs = dataclasses.replace(
        observe(policy(), [moved], {}, states={"w0": circuit_state(moved, state="open")}),
        watched_elsewhere=frozenset({"w0"}),
    )
    plan = plan_policy(obs)
    assert plan.conditions == []
    assert [d.name for d in plan.circuit_state_deletes] == ["w0"]


def test_deleting_a_policy_leaves_the_pods_another_policy_selects_now() -> None:
    mine = pod("w0", condition="False", reason="CircuitOpen")
    theirs = pod("w1", condition="False", reason="CircuitOpen", labels={"app": "gpu"})
    b = policy("b")
    a = policy("a", selector={"matchLabels": {"app": "gpu"}})
    states = {"w0": circuit_state(mine, "b"), "w1": circuit_state(theirs, "b")}
    plan = plan_cleanup(
        b,
        pods={"w0": mine, "w1": theirs},
        circuit_states=states,
        nodes={},
        now=NOW,
        others=[a, b],
    )
    assert [w.pod for w in plan.conditions] == ["w0"]
    assert [d.name for d in plan.circuit_state_deletes] == ["w1"]  # w0's once it is restored


def test_node_cordon_respects_cap_and_storm() -> None:
    gpu = {"nvidia.com/gpu.present": "true"}
    nodes = [node("n1", labels=gpu), node("n2", labels=gpu), node("n3", labels=gpu)]
    pods = [pod(f"w{i}", node=f"n{i % 3 + 1}", condition="True") for i in range(9)]
    pol = policy(
        nodeRemediation={"enabled": True, "tripThreshold": 2, "minDistinctPods": 1},
        safety={"maxCordonedNodes": 1, "stormThreshold": "100%", "maxUnreadyPods": "100%"},
    )
    trips = {n.name: [Trip("x", NOW - 5), Trip("y", NOW - 4)] for n in nodes[:2]}
    trips["n1"].append(Trip("z", NOW - 3))
    plan = plan_policy(
        observe(pol, pods, {p.uid: reading(p) for p in pods}, nodes=nodes, trips=trips)
    )
    assert [c.node for c in plan.nodes] == ["n1"]  # the worst node, and only one
    assert plan.suppressed[("cordon", "cap")] == 1
    cordoned = [
        dataclasses.replace(nodes[0], unschedulable=True, annotations={CORDONED_BY: "ns/pol"}),
        *nodes[1:],
    ]
    plan = plan_policy(
        observe(pol, pods, {p.uid: reading(p) for p in pods}, nodes=cordoned, trips=trips)
    )
    assert plan.nodes == []  # n1 is held, the cap is full
    # A cordon still on its way (another policy's, of a node these pods run on) fills it too.
    obs = observe(pol, pods, {p.uid: reading(p) for p in pods}, nodes=nodes, trips=trips)
    plan = plan_policy(dataclasses.replace(obs, cordons_in_flight={"n3": frozenset({"ns/other"})}))
    assert plan.nodes == [] and plan.suppressed[("cordon", "cap")] == 2


def test_cleanup_restores_pods_removes_states_and_undoes_cordons() -> None:
    pol = policy()
    held = pod("w0", condition="False", reason="CircuitOpen")
    admin = pod("w1", condition="False", reason="SomeoneElse")
    ours = node("n1", unschedulable=True, annotations={CORDONED_BY: "ns/pol"})
    theirs = node("n2", unschedulable=True)
    plan = plan_cleanup(
        pol,
        pods={p.name: p for p in (held, admin)},
        circuit_states={"w0": circuit_state(held), "w1": circuit_state(admin)},
        nodes={"n1": ours, "n2": theirs},
        now=NOW,
    )
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w0", "True")]
    # w0's state goes on the retry after its restore landed (a refused restore is not lost).
    assert sorted(d.name for d in plan.circuit_state_deletes) == ["w1"]
    assert [(c.node, c.action) for c in plan.nodes] == [("n1", "uncordon")]


def test_cleanup_leaves_no_release_marks_of_the_deleted_policy() -> None:
    """Found by the model check: the cleanup's uncordon left released-by naming a policy that
    was gone, so no loop would ever forget it."""
    pol = policy()
    ours = node("n1", unschedulable=True, annotations={CORDONED_BY: "ns/pol"})
    released = node("n2", annotations={RELEASED_AT: rfc3339(NOW), RELEASED_BY: "ns/pol"})
    other = node("n3", annotations={RELEASED_AT: rfc3339(NOW), RELEASED_BY: "ns/b"})
    plan = plan_cleanup(
        pol, pods={}, circuit_states={}, nodes={n.name: n for n in (ours, released, other)}, now=NOW
    )
    assert [(c.node, c.action) for c in plan.nodes] == [("n1", "uncordon"), ("n2", "forget")]
    for change in plan.nodes:
        assert change.annotations[RELEASED_AT] is None and change.annotations[RELEASED_BY] is None


def test_cleanup_never_uncordons_a_node_an_admin_is_draining() -> None:
    """A drain after our cordon makes the node the admin's, the policy's deletion included."""
    ours = node(
        "n1",
        unschedulable=True,
        annotations={CORDONED_BY: "ns/pol", CORDONED_AT: rfc3339(NOW - 300, precise=True)},
    )
    eviction = Condition("DisruptionTarget", "True", "EvictionByEvictionAPI", "", rfc3339(NOW - 10))
    drained = dataclasses.replace(pod("bystander", node="n1"), conditions={eviction.type: eviction})
    plan = plan_cleanup(
        policy(nodeRemediation={"enabled": True}),
        pods={"bystander": drained},
        circuit_states={},
        nodes={"n1": ours},
        now=NOW,
    )
    assert all(c.unschedulable is not False for c in plan.nodes), plan.nodes


def test_a_pod_whose_old_state_is_being_replaced_still_counts_towards_a_storm() -> None:
    """Found by the model check: a moved pod's CircuitState of its earlier self hid its trip."""
    pods = fleet(4, condition="True")
    pol = policy(safety={"maxUnreadyPods": "100%", "stormThreshold": "50%"})
    readings = {p.uid: reading(p, "open") for p in pods[:2]} | {p.uid: reading(p) for p in pods[2:]}
    stale = dataclasses.replace(circuit_state(pods[1], state="open"), owner_uid="earlier")
    plan = plan_policy(observe(pol, pods, readings, states={pods[1].name: stale}))
    assert unready(plan) == []
    assert plan.suppressed[("mark_unready", "storm")] == 1
