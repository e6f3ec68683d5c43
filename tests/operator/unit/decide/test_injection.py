"""Which new pods the webhook gives the readiness gate."""

from __future__ import annotations

from circuitgate_devkit.cluster.plan_builders import policy
from circuitgate_operator.decide.injection import readiness_gates_with_ours
from circuitgate_operator.names import CONDITION_TYPE

GATE = {"conditionType": CONDITION_TYPE}


def new_pod(labels: dict[str, str], gates: list[dict[str, str]] | None = None) -> dict[str, object]:
    return {"metadata": {"labels": labels}, "spec": {"readinessGates": gates or []}}


def test_a_selected_pod_gets_the_gate_next_to_its_own() -> None:
    own = {"conditionType": "example.com/ready"}
    gates = readiness_gates_with_ours(new_pod({"app": "worker"}, [own]), "ns", [policy()])
    assert gates == [own, GATE]


def test_unselected_already_gated_overlapping_or_other_namespaces_are_left_alone() -> None:
    assert readiness_gates_with_ours(new_pod({"app": "web"}), "ns", [policy()]) is None
    assert readiness_gates_with_ours(new_pod({"app": "worker"}, [GATE]), "ns", [policy()]) is None
    assert readiness_gates_with_ours(new_pod({"app": "worker"}), "other", [policy()]) is None
    two = [policy("a"), policy("b")]
    assert readiness_gates_with_ours(new_pod({"app": "worker"}), "ns", two) is None
    off = policy(readiness={"enabled": False})
    assert readiness_gates_with_ours(new_pod({"app": "worker"}), "ns", [off]) is None
