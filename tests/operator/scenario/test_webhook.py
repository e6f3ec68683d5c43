"""Readiness-gate injection through a real admission webhook: the real API server calls the
operator, selected pods come back gated, and a stopped operator never blocks pod creation."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.names import CONDITION_TYPE

pytestmark = pytest.mark.cluster


def webhook_operator(
    start: Callable[..., OperatorProcess], cluster: Cluster
) -> tuple[OperatorProcess, str]:
    process = start(
        "--webhook", "--webhook-host", "127.0.0.1", "--webhook-listen", "127.0.0.1",
        "--webhook-port", str(free_port()),
    )  # fmt: skip
    # The configuration the chart's ServiceAccount may change, named by the chart.
    return process, process.webhook_name


def configuration(cluster: Cluster, name: str) -> dict[str, Any] | None:
    result = cluster.control_plane.kubectl(
        "get", "mutatingwebhookconfiguration", name, "-o", "json", check=False
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def serves(cluster: Cluster, name: str) -> bool:
    config = configuration(cluster, name)
    if config is None:
        return False
    (webhook,) = config["webhooks"]
    (expression,) = webhook["namespaceSelector"]["matchExpressions"]
    return cluster.namespace in expression["values"]


def new_pod(
    cluster: Cluster, name: str, labels: dict[str, str], gates: list[str] = ()
) -> list[str]:  # type: ignore[assignment]
    body = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "worker", "image": "example.com/worker:1"}],
            "readinessGates": [{"conditionType": g} for g in gates],
        },
    }
    created = cluster.core.create_namespaced_pod(cluster.namespace, body)
    return [g.condition_type for g in created.spec.readiness_gates or []]


def test_selected_pods_get_the_gate_and_others_do_not(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator, name = webhook_operator(start_operator, cluster)
    cluster.policy()
    eventually(lambda: serves(cluster, name), what="the webhook configuration")
    config = configuration(cluster, name)
    assert config is not None
    (webhook,) = config["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["rules"][0]["operations"] == ["CREATE"]
    assert webhook["clientConfig"]["url"].startswith("https://127.0.0.1:")

    assert new_pod(cluster, "worker", {"app": "worker"}) == [CONDITION_TYPE]
    assert new_pod(cluster, "web", {"app": "web"}) == []
    assert new_pod(cluster, "own-gate", {"app": "worker"}, ["example.com/warm"]) == [
        "example.com/warm",
        CONDITION_TYPE,
    ]
    assert new_pod(cluster, "already", {"app": "worker"}, [CONDITION_TYPE]) == [CONDITION_TYPE]

    operator.stop(signal.SIGTERM)
    assert configuration(cluster, name) is None  # removed on a graceful exit


def test_a_killed_operator_never_blocks_pod_creation(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator, name = webhook_operator(start_operator, cluster)
    cluster.policy()
    eventually(lambda: serves(cluster, name), what="the webhook configuration")
    operator.kill()
    try:
        # The configuration still points at the dead operator: the API server fails open.
        assert new_pod(cluster, "worker", {"app": "worker"}) == []
    finally:
        cluster.control_plane.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)
