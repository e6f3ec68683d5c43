"""Events as the act layer posts them: one name per object, reason and message (so a repeat
is counted on the same Event, across restarts too), and the body the API server gets."""

from __future__ import annotations

from circuitgate_operator.act.events import event_body, event_name
from circuitgate_operator.decide.intents import EventIntent, ObjectRef

POD = ObjectRef("Pod", "w0", "ns", "uid-w0")


def test_the_same_event_always_has_the_same_name_and_another_never() -> None:
    opened = EventIntent(POD, "CircuitOpened", "breaker b opened", "Warning")
    assert event_name(opened) == event_name(
        EventIntent(POD, "CircuitOpened", "breaker b opened", "Warning")
    )
    others = [
        EventIntent(POD, "CircuitOpened", "breaker c opened", "Warning"),
        EventIntent(POD, "CircuitClosed", "breaker b opened", "Warning"),
        EventIntent(POD, "CircuitOpened", "breaker b opened", "Normal"),
        EventIntent(ObjectRef("Pod", "w0", "ns", "uid-new"), "CircuitOpened", "breaker b opened"),
    ]
    names = {event_name(e) for e in others}
    assert event_name(opened) not in names and len(names) == len(others)
    assert event_name(opened).startswith("w0.")


def test_a_long_object_name_still_makes_a_valid_event_name() -> None:
    long = EventIntent(ObjectRef("Pod", "w" * 300, "ns"), "CircuitOpened", "m")
    assert len(event_name(long)) <= 253


def test_the_body_names_the_object_and_this_operator() -> None:
    intent = EventIntent(POD, "PodMarkedUnready", "x" * 2000, "Warning")
    body = event_body(intent, "w0.abc", "ns", "2027-01-15T08:00:00Z", "host-" + "h" * 200)
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "w0",
        "namespace": "ns",
        "uid": "uid-w0",
    }
    assert (body["reason"], body["type"], body["count"]) == ("PodMarkedUnready", "Warning", 1)
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2027-01-15T08:00:00Z"
    assert len(str(body["message"])) == 1024 and len(str(body["reportingInstance"])) == 128
    assert body["source"] == {"component": "circuitgate-operator"}


def test_a_node_event_has_no_namespace_of_its_own() -> None:
    node = EventIntent(
        ObjectRef("Node", "n1", "", "uid-n1"), "NodeCordoned", "policy ns/p: 3 trips"
    )
    involved = event_body(node, "n1.abc", "default", "t", "host")["involvedObject"]
    assert involved == {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-n1"}
