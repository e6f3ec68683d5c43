"""The chart installed on the node as a user installs it, from the images built for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from circuitgate_devkit.node.cluster import NodeCluster
from circuitgate_devkit.node.images import build_dockerfile_image
from circuitgate_devkit.paths import CHART, REPO
from circuitgate_devkit.waiting import TimedOut, eventually

OPERATOR_IMAGE = "circuitgate.local/circuitgate-operator:0.1.0"
WORKER_IMAGE = "circuitgate.local/circuitgate-example-worker:0.1.0"
REDIS_IMAGE = "circuitgate.local/redis:7"
RELEASE, OPERATOR_NAMESPACE = "circuitgate-operator", "circuitgate-system"
GATE = "circuitgate.io/circuit-closed"
_CRDS = ("circuitpolicies", "circuitstates")
_IMAGES = [
    ("docker/operator.Dockerfile", OPERATOR_IMAGE),
    ("examples/worker/Dockerfile", WORKER_IMAGE),
    ("devkit/circuitgate_devkit/node/redis.Dockerfile", REDIS_IMAGE),
]


def build_images() -> list[Path]:
    """Build (or take from the cache) the project's images; their archives."""
    return [build_dockerfile_image(REPO / dockerfile, name) for dockerfile, name in _IMAGES]


def load_images(cluster: NodeCluster) -> None:
    """The project's images, imported into the node."""
    for archive in build_images():
        cluster.load_image(archive)


@contextlib.contextmanager
def installed_chart(cluster: NodeCluster, *values: str) -> Iterator[str]:
    """``helm install`` with the built image (and ``--set`` values), its pod Ready by its own
    probes; yields the Deployment. ``helm uninstall`` afterwards must leave only the CRDs."""
    repository, _, tag = OPERATOR_IMAGE.rpartition(":")
    sets = [arg for value in values for arg in ("--set", value)]
    cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", *sets, "--wait", "--timeout", "3m", timeout=240,
    )  # fmt: skip
    try:
        yield f"deployment/{RELEASE}"
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")
    ours = ["-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"]

    def left() -> str:
        found = cluster.kubectl("get", "clusterroles,clusterrolebindings", *ours).stdout
        found += cluster.kubectl(
            "get", "all,sa,cm,secrets,leases", "-n", OPERATOR_NAMESPACE, *ours
        ).stdout
        # The webhook configuration the operator made itself goes when it exits.
        found += cluster.kubectl(
            "get", "mutatingwebhookconfigurations", "-l", "app.kubernetes.io/part-of=circuitgate",
            "-o", "name",
        ).stdout  # fmt: skip
        return found.strip()

    # The operator pod takes its grace period to go; nothing else may stay.
    try:
        eventually(lambda: not left(), timeout=60, interval=1, what="helm uninstall")
    except TimedOut:
        raise AssertionError(f"helm uninstall left behind:\n{left()}") from None
    crds = set(cluster.kubectl("get", "crd", "-o", "name").stdout.split())
    prefix = "customresourcedefinition.apiextensions.k8s.io/"
    assert {
        f"{prefix}circuitpolicies.circuitgate.io",
        f"{prefix}circuitstates.circuitgate.io",
    } <= crds


if __name__ == "__main__":  # hack/pytest-halves.sh, before the halves start
    build_images()
