"""The kind end-to-end suite's fixtures: a kind cluster (pytest-kind) with the images built and
loaded, and the chart installed.

Needs a Docker engine. Where ``docker info`` fails, every test here is skipped with that
reason: the only skip in the test tree. Elsewhere a missing piece (pytest-kind, Go to build
kind) fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from circuitgate_devkit.cluster.control_plane import default_bin_dir
from circuitgate_devkit.cluster.helm import CHART
from circuitgate_devkit.paths import REPO

# kind is built from its Go module, like the control plane; its default node image (pinned by
# digest in this version) is Kubernetes v1.37.0.
KIND_VERSION = "v0.33.0"
CLUSTER = "circuitgate-e2e"
TAG = "e2e"
OPERATOR_IMAGE = f"circuitgate-operator:{TAG}"
WORKER_IMAGE = f"circuitgate-example-worker:{TAG}"
REDIS_IMAGE = "redis:7.4.2-alpine"
OPERATOR_NAMESPACE = "circuitgate-system"
RELEASE = "circuitgate-operator"
# One control-plane node and two workers, so one node can be cordoned while the other runs on.
KIND_CONFIG = {
    "kind": "Cluster",
    "apiVersion": "kind.x-k8s.io/v1alpha4",
    "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
}


def docker_unavailable() -> str:
    """Why the suite cannot run here, or '' when ``docker info`` answers."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"docker info exited with {result.returncode}"
    return ""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs Docker; builds images and runs a kind cluster")


def kind_binary() -> Path:
    """$CIRCUITGATE_KIND, else kind built with ``go install`` into the project's cache."""
    explicit = os.environ.get("CIRCUITGATE_KIND")
    if explicit:
        return Path(explicit)
    target = default_bin_dir().parent / f"kind-{KIND_VERSION}" / "kind"
    if not target.exists():
        if shutil.which("go") is None:
            pytest.fail(f"kind {KIND_VERSION} missing and no Go to build it: set CIRCUITGATE_KIND")
        subprocess.run(
            ["go", "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
            env={**os.environ, "GOBIN": str(target.parent)},
            check=True,
            timeout=900,
        )
    return target


def docker_build(dockerfile: str, tag: str) -> None:
    subprocess.run(
        ["docker", "build", "-f", dockerfile, "-t", tag, "."],
        cwd=REPO,
        check=True,
        timeout=1800,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )


@pytest.fixture(scope="session")
def kind_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A kind cluster with the operator and example worker images loaded (pytest-kind's
    fixture of the same name, made here with a pinned kind and the images this repo builds).
    ``--keep-cluster`` keeps it for the next run."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"the kind end-to-end suite needs a Docker engine ({reason})")
    try:
        from pytest_kind import KindCluster
    except ImportError:
        pytest.fail("pytest-kind is not installed (pip install pytest-kind)")
    workdir = Path(tempfile.mkdtemp(prefix="circuitgate-kind-"))
    config_file = workdir / "kind.yaml"
    config_file.write_text(yaml.safe_dump(KIND_CONFIG))
    with pytest.MonkeyPatch.context() as patch:
        # pytest-kind makes a .pytest-kind folder in the working directory: not in the repo.
        patch.chdir(workdir)
        cluster = KindCluster(
            CLUSTER,
            kubeconfig=workdir / "kubeconfig",
            kind_path=kind_binary(),
            kubectl_path=default_bin_dir() / "kubectl",
        )
    cluster.create(config_file=config_file)
    try:
        docker_build("docker/operator.Dockerfile", OPERATOR_IMAGE)
        docker_build("examples/worker/Dockerfile", WORKER_IMAGE)
        subprocess.run(["docker", "pull", REDIS_IMAGE], check=True, timeout=600)
        for image in (OPERATOR_IMAGE, WORKER_IMAGE, REDIS_IMAGE):
            cluster.load_docker_image(image)
        yield cluster
    finally:
        keep = request.config.getoption("keep_cluster", default=False)
        if not keep:
            cluster.delete()
        shutil.rmtree(workdir, ignore_errors=True)


def helm(cluster: Any, *args: str) -> str:
    """The pinned helm against the kind cluster."""
    with tempfile.TemporaryDirectory(prefix="circuitgate-helm-") as home:
        result = subprocess.run(
            [str(default_bin_dir() / "helm"), "--kubeconfig", str(cluster.kubeconfig_path), *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={
                **os.environ,
                "HELM_CACHE_HOME": f"{home}/cache",
                "HELM_CONFIG_HOME": f"{home}/config",
                "HELM_DATA_HOME": f"{home}/data",
            },
        )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def operator(kind_cluster: Any) -> Iterator[str]:
    """The chart installed with node remediation allowed, its operator pod Ready (the kubelet
    runs the probes on kopf's health endpoint); yields the release name."""
    helm(
        kind_cluster, "install", RELEASE, str(CHART),
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--set", f"image.tag={TAG}", "--set", "image.pullPolicy=Never",
        "--set", "nodeRemediation.enabled=true",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    try:
        yield RELEASE
    finally:
        helm(kind_cluster, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")
