"""What the kubelet does with circuitgate's readiness gate, on a real node: the pod's Ready,
its EndpointSlice endpoint and a PodDisruptionBudget's health all follow our condition."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from circuitgate_devkit.node.cluster import NodeCluster
from circuitgate_devkit.node.runtime import PAUSE_IMAGE
from circuitgate_devkit.waiting import eventually

pytestmark = pytest.mark.node

GATE = "circuitgate.io/circuit-closed"


@pytest.fixture
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    name = f"n-{uuid.uuid4().hex[:8]}"
    node_cluster.kubectl("create", "namespace", name)
    # Pods are admitted once the ServiceAccount controller has made the namespace's default.
    eventually(
        lambda: (
            node_cluster.kubectl("get", "-n", name, "sa", "default", check=False).returncode == 0
        ),
        timeout=30,
        what=f"the default ServiceAccount of {name}",
    )
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: NodeCluster, namespace: str, *objects: dict[str, Any]) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def get(cluster: NodeCluster, namespace: str, *what: str) -> Any:
    return json.loads(cluster.kubectl("get", "-n", namespace, *what, "-o", "json").stdout)


def conditions(cluster: NodeCluster, namespace: str, pod: str) -> dict[str, str]:
    status = get(cluster, namespace, "pod", pod)["status"]
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def set_gate(cluster: NodeCluster, namespace: str, pod: str, status: str) -> None:
    """What the operator writes: our condition, through the pods/status subresource."""
    patch = {"status": {"conditions": [{"type": GATE, "status": status, "reason": "Test"}]}}
    cluster.kubectl(
        "patch", "-n", namespace, "pod", pod, "--subresource=status",
        "--type=strategic", "-p", json.dumps(patch),
    )  # fmt: skip


def endpoint_ready(cluster: NodeCluster, namespace: str) -> list[bool]:
    slices = get(cluster, namespace, "endpointslices", "-l", "kubernetes.io/service-name=workers")
    return [
        bool(endpoint["conditions"].get("ready"))
        for item in slices["items"]
        for endpoint in item.get("endpoints") or []
    ]


def test_node_is_ready_with_the_pinned_kubelet(node_cluster: NodeCluster) -> None:
    node = json.loads(
        node_cluster.kubectl("get", "node", node_cluster.node_name, "-o", "json").stdout
    )
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"


def test_the_kubelet_turns_our_condition_into_ready_endpoints_and_pdb_health(
    node_cluster: NodeCluster, namespace: str
) -> None:
    labels = {"app": "workers"}
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "readinessGates": [{"conditionType": GATE}],
                "containers": [
                    {"name": "worker", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}
                ],
                "terminationGracePeriodSeconds": 0,
            },
        }
        for name in ("worker-a", "worker-b")
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "workers"},
        "spec": {"selector": labels, "ports": [{"port": 9808}]},
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "workers"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    }
    apply(node_cluster, namespace, *pods, service, budget)

    def running_but_gated() -> bool:
        states = [conditions(node_cluster, namespace, p["metadata"]["name"]) for p in pods]
        return all(s.get("ContainersReady") == "True" and s.get("Ready") == "False" for s in states)

    eventually(running_but_gated, timeout=60, what="pods running, held unready by the gate")
    eventually(
        lambda: endpoint_ready(node_cluster, namespace) == [False, False],
        timeout=30,
        what="both pods in the EndpointSlice, not ready",
    )

    for pod in ("worker-a", "worker-b"):
        set_gate(node_cluster, namespace, pod, "True")
    eventually(
        lambda: endpoint_ready(node_cluster, namespace) == [True, True],
        timeout=30,
        what="both endpoints ready once our condition is True",
    )
    eventually(
        lambda: get(node_cluster, namespace, "pdb", "workers")["status"].get("currentHealthy") == 2,
        timeout=30,
        what="the PDB counting both pods healthy",
    )

    set_gate(node_cluster, namespace, "worker-a", "False")  # the circuit of worker-a opened
    eventually(
        lambda: conditions(node_cluster, namespace, "worker-a").get("Ready") == "False",
        timeout=30,
        what="the kubelet marking worker-a unready",
    )
    eventually(
        lambda: sorted(endpoint_ready(node_cluster, namespace)) == [False, True],
        timeout=30,
        what="worker-a's endpoint not ready",
    )
    pdb = eventually(
        lambda: (
            (s := get(node_cluster, namespace, "pdb", "workers")["status"]).get("currentHealthy")
            == 1
            and s
        ),
        timeout=30,
        what="the PDB down to one healthy pod",
    )
    assert pdb["disruptionsAllowed"] == 0, "the last Ready worker must not be evicted"
    assert conditions(node_cluster, namespace, "worker-a")["ContainersReady"] == "True"
