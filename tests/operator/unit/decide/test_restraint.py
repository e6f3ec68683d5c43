"""The one pass that holds actions back: pause before storm and caps, dry run last, and never
a first True (the gate would otherwise keep a pod unready for ever)."""

from __future__ import annotations

from circuitgate_operator.decide.caps import Cap
from circuitgate_operator.decide.intents import (
    ConditionWrite,
    EventIntent,
    Eviction,
    NodeChange,
    ObjectRef,
    Plan,
)
from circuitgate_operator.decide.restraint import Restraints, restrain
from circuitgate_operator.model import Condition
from circuitgate_operator.names import CONDITION_TYPE

NO_CAP = Cap("100%", 10, 0)


def restraints(**fields: object) -> Restraints:
    values: dict[str, object] = {
        "paused": False,
        "dry_run": False,
        "storm": False,
        "unready": NO_CAP,
        "cordoned": NO_CAP,
    }
    values.update(fields)
    return Restraints(**values)  # type: ignore[arg-type]


def event(name: str, reason: str) -> tuple[EventIntent, ...]:
    return (EventIntent(ObjectRef("Pod", name, "ns"), reason, f"{reason} {name}"),)


def mark(name: str, *, first: bool = False) -> ConditionWrite:
    condition = Condition(CONDITION_TYPE, "False", "CircuitOpen", "open", "t1")
    return ConditionWrite(
        "ns",
        name,
        condition,
        marks_unready=True,
        events=event(name, "PodMarkedUnready"),
        first=first,
    )


def ready(name: str, *, first: bool = False) -> ConditionWrite:
    condition = Condition(CONDITION_TYPE, "True", "CircuitClosed", "closed", "t1")
    return ConditionWrite("ns", name, condition, events=event(name, "PodMarkedReady"), first=first)


def node(name: str, action: str) -> NodeChange:
    return NodeChange(name, action, True, None, {}, "1", "why", events=event(name, "NodeCordoned"))  # type: ignore[arg-type]


def plan(*conditions: ConditionWrite, nodes: tuple[NodeChange, ...] = ()) -> Plan:
    return Plan(
        conditions=list(conditions),
        nodes=list(nodes),
        evictions=[Eviction("ns", "w9", "n1", events=event("w9", "PodEvicted"), unready=True)],
    )


def statuses(p: Plan) -> dict[str, tuple[str, str]]:
    return {w.pod: (w.condition.status, w.condition.reason) for w in p.conditions}


def test_nothing_held_back_leaves_the_plan_as_it_was() -> None:
    p = plan(mark("w0"), ready("w1"), nodes=(node("n1", "cordon"),))
    assert restrain(p, restraints()) is False
    assert statuses(p) == {"w0": ("False", "CircuitOpen"), "w1": ("True", "CircuitClosed")}
    assert len(p.nodes) == len(p.evictions) == 1 and p.suppressed == {}


def test_a_pause_holds_back_everything_but_first_trues() -> None:
    p = plan(
        mark("w0"),
        mark("new", first=True),
        ready("w1"),
        ready("fresh", first=True),
        nodes=(node("n1", "cordon"), node("n2", "uncordon")),
    )
    # A pause comes before a storm and the caps: it is the only cause counted.
    assert restrain(p, restraints(paused=True, storm=True, dry_run=True)) is False
    assert statuses(p) == {"fresh": ("True", "CircuitClosed"), "new": ("True", "Paused")}
    assert p.nodes == [] and p.evictions == []
    assert p.suppressed == {
        ("mark_unready", "paused"): 2,
        ("mark_ready", "paused"): 1,
        ("cordon", "paused"): 1,
        ("uncordon", "paused"): 1,
        ("evict", "paused"): 1,
    }
    assert p.events == []  # nothing left for the dry run to describe


def test_a_pause_still_lets_go_of_a_node_someone_else_took_over() -> None:
    """The evidence of a drain goes with its pods: held until after the pause, the release
    would come too late, and the cool-down would uncordon the admin's node."""
    release = node("n3", "release")
    p = plan(nodes=(node("n1", "cordon"), release))
    restrain(p, restraints(paused=True))
    assert p.nodes == [release]
    assert p.suppressed == {("cordon", "paused"): 1, ("evict", "paused"): 1}


def test_a_storm_holds_back_new_marks_cordons_and_evictions() -> None:
    p = plan(
        mark("w0"),
        mark("new", first=True),
        ready("w1"),
        nodes=(node("n1", "cordon"), node("n2", "uncordon")),
    )
    assert restrain(p, restraints(storm=True, unready=Cap(0, 10, 0))) is False
    assert statuses(p) == {
        "w1": ("True", "CircuitClosed"),
        "new": ("True", "SuspectedSharedOutage"),
    }
    assert [c.node for c in p.nodes] == ["n2"] and p.evictions == []
    assert p.suppressed == {
        ("mark_unready", "storm"): 2,
        ("cordon", "storm"): 1,
        ("evict", "storm"): 1,
    }


def test_caps_let_the_first_candidates_through_counting_what_is_held() -> None:
    marks = [mark("w0"), mark("w1"), mark("w2", first=True)]
    cordons = (node("n1", "cordon"), node("n2", "cordon"))
    p = plan(*marks, nodes=cordons)
    capped = restrain(p, restraints(unready=Cap(2, 10, 1), cordoned=Cap("50%", 2, 0)))
    assert capped is True
    assert statuses(p) == {"w0": ("False", "CircuitOpen"), "w2": ("True", "SafetyCapReached")}
    assert [c.node for c in p.nodes] == ["n1"]
    assert p.suppressed == {("mark_unready", "cap"): 2, ("cordon", "cap"): 1}


def test_a_dry_run_describes_what_is_left_after_the_caps() -> None:
    p = plan(mark("w0"), mark("w1"), ready("fresh", first=True), nodes=(node("n1", "cordon"),))
    assert restrain(p, restraints(dry_run=True, unready=Cap(1, 10, 0))) is True
    assert statuses(p) == {"fresh": ("True", "CircuitClosed")}
    assert p.nodes == [] and p.evictions == []
    assert sorted(e.message for e in p.events) == [
        "dry run: would cordon: NodeCordoned n1",
        "dry run: would evict: PodEvicted w9",
        "dry run: would mark unready: PodMarkedUnready w0",
    ]
    assert all(e.type == "Normal" for e in p.events)
    assert p.suppressed == {
        ("mark_unready", "cap"): 1,
        ("mark_unready", "dry_run"): 1,
        ("cordon", "dry_run"): 1,
        ("evict", "dry_run"): 1,
    }


def test_evicting_a_pod_still_ready_takes_a_slot_of_the_unready_cap_after_the_marks() -> None:
    evictions = [
        Eviction("ns", "r0", "n1", events=event("r0", "PodEvicted")),
        Eviction("ns", "r1", "n1", events=event("r1", "PodEvicted")),
        Eviction("ns", "u0", "n1", events=event("u0", "PodEvicted"), unready=True),
    ]
    p = Plan(conditions=[mark("w0")], evictions=list(evictions))
    assert restrain(p, restraints(unready=Cap(3, 10, 1))) is True
    assert statuses(p) == {"w0": ("False", "CircuitOpen")}
    assert [e.pod for e in p.evictions] == ["r0", "u0"]
    assert p.suppressed == {("evict", "cap"): 1}
