"""The whole story on a real cluster, kubelet in the loop: install the chart, run the example
workers, break one the way a failed GPU breaks, and watch the cluster react.

Run it where Docker works: ``python -m pytest tests/e2e`` (about 10 minutes the first time:
building kind and two images, pulling the kind node image). Elsewhere it is skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
import yaml

from circuitgate_devkit.cluster.examples import example_objects
from circuitgate_devkit.waiting import eventually
from tests.e2e.conftest import OPERATOR_NAMESPACE, REDIS_IMAGE, WORKER_IMAGE

pytestmark = pytest.mark.e2e

NAMESPACE = "workers"
T = TypeVar("T")


@pytest.fixture(scope="module")
def workers(kind_cluster: Any, operator: str) -> Iterator[list[str]]:
    """The example workers Ready (the operator opened their readiness gate); their pod names."""
    kind_cluster.kubectl("create", "namespace", NAMESPACE)
    documents = yaml.safe_dump_all(
        example_objects(worker_image=WORKER_IMAGE, redis_image=REDIS_IMAGE)
    )
    kind_cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=documents)
    try:
        kind_cluster.kubectl(
            "wait", "-n", NAMESPACE, "--for=condition=Ready", "pod", "-l", "app=celery-worker",
            "--timeout=300s",
        )  # fmt: skip
        yield pod_names(kind_cluster)
    finally:
        kind_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def pod_names(cluster: Any) -> list[str]:
    listing = cluster.kubectl(
        "get", "pods", "-n", NAMESPACE, "-l", "app=celery-worker", "-o", "json"
    )
    return sorted(p["metadata"]["name"] for p in json.loads(listing)["items"])


def pod(cluster: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "pod", name, "-n", NAMESPACE, "-o", "json")
    )
    return found


def condition(pod_object: dict[str, Any], kind: str) -> str:
    for item in pod_object["status"].get("conditions", []):
        if item["type"] == kind:
            return str(item["status"])
    return "missing"


def reasons(cluster: Any, namespace: str, name: str) -> set[str]:
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
        "-o", "json",
    )  # fmt: skip
    return {event["reason"] for event in json.loads(events)["items"]}


def test_a_broken_worker_is_marked_unready_its_node_cordoned_and_it_recovers(
    kind_cluster: Any, workers: list[str]
) -> None:
    for name in workers:
        assert condition(pod(kind_cluster, name), "circuitgate.io/circuit-closed") == "True"
    broken, *healthy = workers
    node = pod(kind_cluster, broken)["spec"]["nodeName"]
    kind_cluster.kubectl("exec", "-n", NAMESPACE, broken, "--", "touch", "/tmp/gpu-broken")
    kind_cluster.kubectl(
        "exec", "-n", NAMESPACE, healthy[0], "--", "python", "app.py", "enqueue", "400"
    )

    # The circuit opens: the operator closes the gate, the kubelet makes the pod unready.
    eventually(
        lambda: condition(pod(kind_cluster, broken), "Ready") == "False",
        timeout=120,
        interval=2,
        what="the broken pod unready",
    )
    assert condition(pod(kind_cluster, broken), "circuitgate.io/circuit-closed") == "False"
    state = json.loads(
        kind_cluster.kubectl("get", "circuitstate", broken, "-n", NAMESPACE, "-o", "json")
    )
    assert state["status"]["state"] in {"open", "half_open"}
    assert {"CircuitOpened", "PodMarkedUnready"} <= reasons(kind_cluster, NAMESPACE, broken)
    # Liveness never depends on the breaker: the broken pod is not restarted.
    (status,) = pod(kind_cluster, broken)["status"]["containerStatuses"]
    assert status["restartCount"] == 0
    for name in healthy:
        assert condition(pod(kind_cluster, name), "Ready") == "True"

    # The half-open trial fails too: a second trip on the node cordons and taints it.
    def cordoned() -> bool:
        spec = json.loads(kind_cluster.kubectl("get", "node", node, "-o", "json"))["spec"]
        return bool(spec.get("unschedulable"))

    eventually(cordoned, timeout=240, interval=2, what=f"node {node} cordoned")
    taints = json.loads(kind_cluster.kubectl("get", "node", node, "-o", "json"))["spec"]["taints"]
    assert "circuitgate.io/tripped" in {t["key"] for t in taints}
    assert "NodeCordoned" in reasons(kind_cluster, "default", node)

    # Repaired: the next trial succeeds, the circuit closes, the pod is Ready again.
    kind_cluster.kubectl("exec", "-n", NAMESPACE, broken, "--", "rm", "/tmp/gpu-broken")
    eventually(
        lambda: condition(pod(kind_cluster, broken), "Ready") == "True",
        timeout=300,
        interval=2,
        what="the repaired pod Ready again",
    )
    assert "PodMarkedReady" in reasons(kind_cluster, NAMESPACE, broken)


def test_operator_runs_locked_down_as_its_account(kind_cluster: Any, operator: str) -> None:
    """The kubelet honours the chart's pod: Ready through kopf's health endpoint, not root,
    nothing writable outside /tmp, and the API server refuses it nothing it needs."""
    target = f"deployment/{operator}"
    namespace = ["-n", OPERATOR_NAMESPACE]
    kind_cluster.kubectl("rollout", "status", target, *namespace, "--timeout=60s")
    assert kind_cluster.kubectl("exec", target, *namespace, "--", "id", "-u").strip() == "65532"
    written = subprocess.run(
        [str(kind_cluster.kubectl_path), "exec", target, *namespace, "--", "touch", "/opt/x"],
        env={"KUBECONFIG": str(kind_cluster.kubeconfig_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    logs = kind_cluster.kubectl("logs", target, *namespace)
    assert "Forbidden" not in logs and "Not enough permissions" not in logs, logs
