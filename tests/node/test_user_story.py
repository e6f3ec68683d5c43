"""The user's story on a real node: the chart installed by Helm from the project's own image,
the example workers from examples/manifests/, one broken the way the README says, and what the
kubelet computes from it (Ready, EndpointSlices, the PDB, a refused drain), then recovery.

Images are built from docker/operator.Dockerfile and examples/worker/Dockerfile by buildah on
a Debian base (cached by their inputs' hash), and imported into the node's containerd.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from circuitgate_devkit.cluster.examples import example_objects
from circuitgate_devkit.node.cluster import NodeCluster
from circuitgate_devkit.waiting import TimedOut, eventually
from tests.node.release import (
    GATE,
    OPERATOR_NAMESPACE,
    REDIS_IMAGE,
    RELEASE,
    WORKER_IMAGE,
    installed_chart,
    load_images,
)

pytestmark = pytest.mark.node

NAMESPACE = "workers"
_SUCCESSES = re.compile(r'^circuitgate_calls_total\{[^}]*outcome="success"[^}]*\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def operator(node_cluster: NodeCluster) -> Iterator[str]:
    """The chart installed with node remediation allowed (the story cordons the node)."""
    load_images(node_cluster)
    with installed_chart(node_cluster, "nodeRemediation.enabled=true") as deployment:
        yield deployment


@pytest.fixture(scope="module")
def workers(node_cluster: NodeCluster, operator: str) -> Iterator[list[str]]:
    """The example workers Ready (probes passed and the operator opened their gate), and a
    Service over their endpoint port, so the kubelet's verdict shows in an EndpointSlice."""
    node_cluster.kubectl("create", "namespace", NAMESPACE)
    objects = example_objects(
        worker_image=WORKER_IMAGE, redis_image=REDIS_IMAGE, task_seconds=1, cooldown_seconds=60
    )
    objects.append({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "celery-worker"},
        "spec": {"selector": {"app": "celery-worker"}, "clusterIP": "None",
                 "ports": [{"name": "circuitgate", "port": 9808}]},
    })  # fmt: skip
    eventually(
        lambda: node_cluster.kubectl("get", "-n", NAMESPACE, "sa", "default", check=False).stdout,
        timeout=30,
        what="the namespace's default ServiceAccount",
    )
    node_cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        node_cluster.kubectl(
            "wait", "-n", NAMESPACE, "--for=condition=Ready", "pod", "-l", "app=celery-worker",
            "--timeout=180s", timeout=200,
        )  # fmt: skip
        yield worker_pods(node_cluster)
    finally:
        node_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=true", timeout=180)


def worker_pods(cluster: NodeCluster) -> list[str]:
    listing = get(cluster, "pods", "-l", "app=celery-worker")["items"]
    return sorted(pod["metadata"]["name"] for pod in listing)


def get(cluster: NodeCluster, *what: str, namespace: str = NAMESPACE) -> Any:
    return json.loads(cluster.kubectl("get", "-n", namespace, *what, "-o", "json").stdout)


def condition(cluster: NodeCluster, pod: str, kind: str) -> str:
    for item in get(cluster, "pod", pod)["status"].get("conditions", []):
        if item["type"] == kind:
            return str(item["status"])
    return "missing"


def reasons(cluster: NodeCluster, name: str, namespace: str = NAMESPACE) -> set[str]:
    events = get(cluster, "events", "--field-selector", f"involvedObject.name={name}",
                 namespace=namespace)  # fmt: skip
    return {event["reason"] for event in events["items"]}


def endpoints(cluster: NodeCluster) -> dict[str, bool]:
    """Pod name -> the EndpointSlice's ``ready`` for it."""
    slices = get(cluster, "endpointslices", "-l", "kubernetes.io/service-name=celery-worker")
    return {
        endpoint["targetRef"]["name"]: bool(endpoint["conditions"].get("ready"))
        for item in slices["items"]
        for endpoint in item.get("endpoints") or []
    }


def pdb(cluster: NodeCluster) -> dict[str, Any]:
    status: dict[str, Any] = get(cluster, "pdb", "celery-worker")["status"]
    return status


def successes(cluster: NodeCluster, pods: list[str]) -> int:
    """Guarded task successes, summed over the workers' /metrics (through the API server)."""
    total = 0.0
    for pod in pods:
        text = cluster.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}:9808/proxy/metrics"
        ).stdout
        total += sum(float(value) for value in _SUCCESSES.findall(text))
    return int(total)


def redis_backlog(cluster: NodeCluster) -> tuple[int, int]:
    """Messages waiting in the queue, and delivered but unacknowledged ones."""

    def ask(*command: str) -> int:
        return int(cluster.kubectl("exec", "-n", NAMESPACE, "deploy/redis", "--",
                                   "redis-cli", *command).stdout.strip())  # fmt: skip

    return ask("llen", "celery"), ask("hlen", "unacked")


def enqueue(cluster: NodeCluster, pod: str, count: int) -> int:
    """The README's way: the example app's own command, run in a worker pod."""
    cluster.kubectl("exec", "-n", NAMESPACE, pod, "--", "python", "app.py", "enqueue", str(count))
    return count


class Traffic:
    """Keeps a few messages waiting, as production traffic would, so an open circuit always
    has a trial to run when its period ends; counts what it sent."""

    def __init__(self, cluster: NodeCluster, pod: str) -> None:
        self.cluster, self.pod, self.sent = cluster, pod, 0

    def send(self, count: int) -> None:
        self.sent += enqueue(self.cluster, self.pod, count)

    def keep_flowing(self) -> None:
        if redis_backlog(self.cluster)[0] < 8:
            self.send(20)


def snapshot(cluster: NodeCluster) -> str:
    return cluster.kubectl("get", "-n", NAMESPACE, "pods,endpointslices,pdb", "-o", "wide").stdout


@pytest.mark.timeout(900)
def test_a_broken_worker_turns_unready_for_the_kubelet_and_comes_back(
    node_cluster: NodeCluster, workers: list[str]
) -> None:
    broken, *healthy = workers
    node = node_cluster.node_name
    assert all(condition(node_cluster, pod, GATE) == "True" for pod in workers)
    assert endpoints(node_cluster) == dict.fromkeys(workers, True)
    print("before the trip:\n" + snapshot(node_cluster))

    node_cluster.kubectl("exec", "-n", NAMESPACE, broken, "--", "touch", "/tmp/gpu-broken")
    traffic = Traffic(node_cluster, healthy[0])
    traffic.send(40)

    # The circuit opens: the operator closes the gate, and the kubelet does the rest.
    eventually(lambda: condition(node_cluster, broken, "Ready") == "False", timeout=120,
               interval=0.5, what="the broken pod unready")  # fmt: skip
    # The worker's own readinessProbe (/readyz answers 503 while open) agrees with the gate.
    eventually(lambda: endpoints(node_cluster).get(broken) is False, timeout=30,
               what="its EndpointSlice endpoint not ready")  # fmt: skip
    eventually(lambda: pdb(node_cluster).get("currentHealthy") == 2, timeout=30,
               what="the PDB one healthy pod down")  # fmt: skip
    assert pdb(node_cluster)["disruptionsAllowed"] == 0
    assert {"CircuitOpened", "PodMarkedUnready"} <= reasons(node_cluster, broken)
    for pod in healthy:
        assert condition(node_cluster, pod, "Ready") == "True"
    print("after the trip:\n" + snapshot(node_cluster))

    # The half-open trial fails too: a second trip on the node cordons and taints it.
    def node_spec() -> dict[str, Any]:
        spec: dict[str, Any] = get(node_cluster, "node", node, namespace="default")["spec"]
        return spec

    def cordoned() -> bool:
        traffic.keep_flowing()
        return bool(node_spec().get("unschedulable"))

    eventually(cordoned, timeout=150, interval=1, what=f"node {node} cordoned")
    assert "circuitgate.io/tripped" in {t["key"] for t in node_spec().get("taints", [])}
    assert "NodeCordoned" in reasons(node_cluster, node, namespace="default")
    # Liveness never depends on the breaker: the broken pod is not restarted.
    (status,) = get(node_cluster, "pod", broken)["status"]["containerStatuses"]
    assert status["restartCount"] == 0

    # Draining would now take a healthy worker: the PDB refuses the eviction (the Eviction API,
    # what `kubectl drain` calls). The unready worker itself could go (IfHealthyBudget).
    eviction = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                           "metadata": {"name": healthy[0], "namespace": NAMESPACE}})  # fmt: skip
    refused = node_cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{healthy[0]}/eviction",
        "-f", "-", input=eviction, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "disruption budget" in refused.stderr, refused.stderr
    assert worker_pods(node_cluster) == workers, "no worker may have been evicted"

    # Repaired: the next trial succeeds, the circuit closes, the pod is Ready again.
    node_cluster.kubectl("exec", "-n", NAMESPACE, broken, "--", "rm", "/tmp/gpu-broken")

    def repaired() -> bool:
        traffic.keep_flowing()
        return condition(node_cluster, broken, "Ready") == "True"

    eventually(repaired, timeout=240, interval=1, what="the repaired pod Ready again")
    assert "PodMarkedReady" in reasons(node_cluster, broken)
    try:
        eventually(lambda: endpoints(node_cluster) == dict.fromkeys(workers, True), timeout=30)
    except TimedOut:  # say which pod, and what its kubelet last said of it
        pytest.fail(
            f"not every endpoint ready: {endpoints(node_cluster)}; "
            f"Ready: { {pod: condition(node_cluster, pod, 'Ready') for pod in workers} }; "
            f"events: { {pod: sorted(reasons(node_cluster, pod)) for pod in workers} }"
        )
    eventually(lambda: pdb(node_cluster).get("currentHealthy") == 3, timeout=30,
               what="the PDB whole again")  # fmt: skip

    # Every task succeeded exactly once, none is left waiting or unacknowledged.
    eventually(lambda: successes(node_cluster, workers) >= traffic.sent, timeout=180,
               interval=1, what=f"all {traffic.sent} tasks done")  # fmt: skip
    assert successes(node_cluster, workers) == traffic.sent
    assert redis_backlog(node_cluster) == (0, 0)

    # The cool-down passes with every breaker closed: the operator uncordons what it cordoned.
    eventually(lambda: not node_spec().get("unschedulable"), timeout=180, interval=1,
               what=f"node {node} uncordoned after the cool-down")  # fmt: skip
    assert "circuitgate.io/tripped" not in {t["key"] for t in node_spec().get("taints", [])}


@pytest.mark.timeout(600)
def test_a_rollout_of_a_broken_version_stalls_instead_of_replacing_healthy_workers(
    node_cluster: NodeCluster, workers: list[str]
) -> None:
    """With minReadySeconds, a new version whose workers trip never becomes available, so
    the Deployment keeps every old worker: readiness is what makes a rollout safe."""
    old = worker_pods(node_cluster)
    traffic = Traffic(node_cluster, old[0])
    before = successes(node_cluster, old)
    traffic.send(20)
    # The new version cannot use its device: every task fails fast, as on a broken driver.
    patch = {"spec": {"minReadySeconds": 20, "template": {"spec": {"containers": [
        {"name": "worker", "env": [{"name": "EXAMPLE_FAULT_FILE", "value": "/app/app.py"}]}
    ]}}}}  # fmt: skip
    node_cluster.kubectl(
        "patch", "-n", NAMESPACE, "deployment", "celery-worker", "-p", json.dumps(patch)
    )

    def new_pod_tripped() -> str:
        traffic.keep_flowing()
        new = [pod for pod in worker_pods(node_cluster) if pod not in old]
        tripped = [pod for pod in new if condition(node_cluster, pod, GATE) == "False"]
        return tripped[0] if tripped else ""

    surged = eventually(new_pod_tripped, timeout=120, interval=1, what="the new worker tripped")
    assert condition(node_cluster, surged, "Ready") == "False"
    status = get(node_cluster, "deployment", "celery-worker")["status"]
    assert status.get("updatedReplicas") == 1 and status.get("availableReplicas") == 3, status
    assert all(condition(node_cluster, pod, "Ready") == "True" for pod in old)
    # The rollout cannot finish: the controller will not take an old worker for an
    # unavailable new one (maxUnavailable 25% of 3 is 0).
    stalled = node_cluster.kubectl(
        "rollout", "status", "-n", NAMESPACE, "deployment/celery-worker", "--timeout=15s",
        check=False, timeout=60,
    )  # fmt: skip
    assert stalled.returncode != 0 and "1 out of 3 new replicas" in stalled.stdout, stalled
    assert set(old) <= set(worker_pods(node_cluster)), "no old worker may have been replaced"

    node_cluster.kubectl("rollout", "undo", "-n", NAMESPACE, "deployment/celery-worker")
    node_cluster.kubectl("rollout", "status", "-n", NAMESPACE, "deployment/celery-worker",
                         "--timeout=120s", timeout=150)  # fmt: skip
    # The surged worker leaves by a warm shutdown (its grace period is the example's 120 s).
    eventually(lambda: worker_pods(node_cluster) == old, timeout=150, interval=1,
               what="only the old workers left")  # fmt: skip
    # What the broken worker failed was handed back: every task still succeeds exactly once.
    eventually(lambda: successes(node_cluster, old) - before >= traffic.sent, timeout=120,
               interval=1, what=f"all {traffic.sent} tasks done")  # fmt: skip
    assert successes(node_cluster, old) - before == traffic.sent
    assert redis_backlog(node_cluster) == (0, 0)


def test_the_operator_runs_from_its_image_locked_down_and_without_celery(
    node_cluster: NodeCluster, operator: str
) -> None:
    """The kubelet runs the chart's pod as written: Ready by kopf's health endpoint, never
    restarted, not root, nothing writable outside /tmp, and no Celery in its image."""
    namespace = ["-n", OPERATOR_NAMESPACE]
    (pod,) = get(node_cluster, "pods", "-l", f"app.kubernetes.io/instance={RELEASE}",
                 namespace=OPERATOR_NAMESPACE)["items"]  # fmt: skip
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    uid = node_cluster.kubectl("exec", operator, *namespace, "--", "id", "-u").stdout.strip()
    assert uid == "65532"
    written = node_cluster.kubectl(
        "exec", operator, *namespace, "--", "touch", "/opt/x", check=False
    )
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    celery = node_cluster.kubectl(
        "exec", operator, *namespace, "--", "pip", "show", "celery", check=False
    )
    assert celery.returncode != 0 and "not found" in celery.stderr.lower(), celery.stderr
    logs = node_cluster.kubectl("logs", operator, *namespace).stdout
    assert "Forbidden" not in logs and "Not enough permissions" not in logs, logs
