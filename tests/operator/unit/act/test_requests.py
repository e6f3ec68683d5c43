"""What the act layer sends for each intended write: the paths and bodies the API server gets,
built from a Plan's intents without one."""

from __future__ import annotations

from circuitgate_operator.act.requests import (
    circuit_state_body,
    circuit_state_status,
    circuit_states_path,
    condition_patch,
    eviction_body,
    node_patch,
    policy_status_patch,
    policy_status_path,
)
from circuitgate_operator.decide.intents import (
    CircuitStateWrite,
    ConditionWrite,
    Eviction,
    NodeChange,
    PolicyStatusWrite,
)
from circuitgate_operator.model import Condition, Taint, parse_circuit_state
from circuitgate_operator.names import CONDITION_TYPE


def state_write(**fields: object) -> CircuitStateWrite:
    values: dict[str, object] = {
        "namespace": "ns",
        "name": "w0",
        "pod_uid": "uid-w0",
        "policy": "workers",
        "status": {"state": "open", "trips": 2},
        "create": True,
    }
    values.update(fields)
    return CircuitStateWrite(**values)  # type: ignore[arg-type]


def test_a_condition_is_patched_alone_with_no_probe_time() -> None:
    condition = Condition(CONDITION_TYPE, "False", "CircuitOpen", "breaker b is open", "t1")
    patch = condition_patch(ConditionWrite("ns", "w0", condition, marks_unready=True))
    assert patch == {
        "status": {
            "conditions": [
                {
                    "type": CONDITION_TYPE,
                    "status": "False",
                    "reason": "CircuitOpen",
                    "message": "breaker b is open",
                    "lastTransitionTime": "t1",
                    "lastProbeTime": None,
                }
            ]
        }
    }


def test_a_new_circuit_state_is_labelled_and_owned_by_its_pod() -> None:
    body = circuit_state_body(state_write())
    assert body["apiVersion"] == "circuitgate.io/v1alpha1" and body["kind"] == "CircuitState"
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "w0", "uid-w0")
    assert owner["blockOwnerDeletion"] is False  # the pod's deletion never waits for it
    # Read back, it is the policy's and the pod's.
    view = parse_circuit_state(body)
    assert (view.policy, view.owner_uid, view.key) == ("workers", "uid-w0", "ns/w0")
    assert circuit_states_path("ns") == "/apis/circuitgate.io/v1alpha1/namespaces/ns/circuitstates"


def test_status_patches_carry_only_the_change_and_null_what_went() -> None:
    write = state_write(status={"state": "closed", "trips": 2})
    observed = {"state": "open", "trips": 2, "openedAt": "t0"}
    assert circuit_state_status(write, observed) == {
        "status": {"state": "closed", "openedAt": None}
    }
    status = PolicyStatusWrite("ns", "workers", {"matchedPods": 3}, {"matchedPods": 2})
    assert policy_status_patch(status) == {"status": {"matchedPods": 3}}
    assert policy_status_path("ns", "workers").endswith("/ns/circuitpolicies/workers/status")


def test_a_node_patch_is_a_compare_and_set_that_touches_only_what_changes() -> None:
    taint = Taint("circuitgate.io/tripped", "gpu", "NoSchedule")
    cordon = NodeChange(
        "n1", "cordon", True, (taint,), {"circuitgate.io/cordoned-by": "ns/p"}, "41", "3 trips"
    )
    assert node_patch(cordon) == {
        "metadata": {
            "annotations": {"circuitgate.io/cordoned-by": "ns/p"},
            "resourceVersion": "41",
        },
        "spec": {
            "unschedulable": True,
            "taints": [{"key": "circuitgate.io/tripped", "value": "gpu", "effect": "NoSchedule"}],
        },
    }
    # A release (someone else uncordoned it) with no taint of ours: annotations only.
    release = NodeChange("n1", "release", None, None, {"circuitgate.io/cordoned-by": None}, "", "")
    assert node_patch(release) == {
        "metadata": {"annotations": {"circuitgate.io/cordoned-by": None}}
    }


def test_an_eviction_is_for_that_very_pod() -> None:
    body = eviction_body(Eviction("ns", "w0", "n1", "uid-w0"))
    assert body == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "w0", "namespace": "ns"},
        "deleteOptions": {"preconditions": {"uid": "uid-w0"}},
    }
    assert "deleteOptions" not in eviction_body(Eviction("ns", "w0", "n1"))
