"""The readiness-gate webhook for real: the API server calls the operator pod through its
Service (kube-proxy in the loop), and pod creation goes on while the operator is frozen
(failurePolicy Ignore). Frozen, not stopped: a stopped operator removes its configuration on
the way out, so only a process that cannot answer shows what failurePolicy does."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from circuitgate_devkit.node.cluster import NodeCluster
from circuitgate_devkit.node.runtime import PAUSE_IMAGE
from circuitgate_devkit.waiting import eventually
from tests.node.release import GATE, OPERATOR_NAMESPACE, RELEASE, installed_chart, load_images

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    """The chart with the webhook on, and a namespace whose policy selects ``app=worker``."""
    load_images(node_cluster)
    name = f"hooked-{uuid.uuid4().hex[:6]}"
    with installed_chart(node_cluster, "webhook.enabled=true"):
        node_cluster.kubectl("create", "namespace", name)
        policy = {
            "apiVersion": "circuitgate.io/v1alpha1", "kind": "CircuitPolicy",
            "metadata": {"name": "workers", "namespace": name},
            "spec": {"selector": {"matchLabels": {"app": "worker"}}, "endpoint": {"port": 9808}},
        }  # fmt: skip
        node_cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
        eventually(lambda: name in webhook_namespaces(node_cluster), timeout=60, interval=0.5,
                   what=f"the webhook configuration covering {name}")  # fmt: skip
        eventually(
            lambda: node_cluster.kubectl("get", "-n", name, "sa", "default", check=False).stdout,
            timeout=30,
            what="the namespace's default ServiceAccount",
        )
        yield name
        node_cluster.kubectl("delete", "namespace", name, "--timeout=120s", timeout=150)


def webhook_namespaces(cluster: NodeCluster) -> list[str]:
    ours = ["-l", "app.kubernetes.io/part-of=circuitgate", "-o", "json"]
    listing = cluster.kubectl("get", "mutatingwebhookconfigurations", *ours).stdout
    configs = json.loads(listing)["items"]
    return [
        value
        for config in configs
        for hook in config["webhooks"]
        for expression in hook["namespaceSelector"]["matchExpressions"]
        for value in expression["values"]
    ]


def create_pod(cluster: NodeCluster, namespace: str, app: str) -> dict[str, Any]:
    """A pod without a readiness gate, as a user who relies on the webhook writes it."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": f"{app}-", "namespace": namespace, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}],
                 "terminationGracePeriodSeconds": 0},
    }  # fmt: skip
    created: dict[str, Any] = json.loads(
        cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(pod)).stdout
    )
    return created


def gates(pod: dict[str, Any]) -> list[str]:
    return [gate["conditionType"] for gate in pod["spec"].get("readinessGates") or []]


def test_a_selected_pod_gets_the_gate_through_the_operator_pods_service(
    node_cluster: NodeCluster, namespace: str
) -> None:
    assert gates(create_pod(node_cluster, namespace, "worker")) == [GATE]
    assert gates(create_pod(node_cluster, namespace, "other")) == []


def test_pod_creation_goes_on_while_the_operator_cannot_answer(
    node_cluster: NodeCluster, namespace: str
) -> None:
    release = ["-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"]
    listing = node_cluster.kubectl("get", "pods", *release, "-o", "json").stdout
    (operator,) = json.loads(listing)["items"]
    pids = node_cluster.container_pids(OPERATOR_NAMESPACE, operator["metadata"]["name"])
    assert pids, "the operator's container has no process"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # The API server waits out the webhook's timeout (5 s), then admits the pod as is.
        frozen = create_pod(node_cluster, namespace, "worker")
        assert gates(frozen) == [], "a frozen operator cannot have injected the gate"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    eventually(lambda: gates(create_pod(node_cluster, namespace, "worker")) == [GATE],
               timeout=60, interval=2, what="injection back once the operator answers")  # fmt: skip
