"""Readiness-gate injection through a real admission webhook: the real API server calls the
operator, selected pods come back gated, and a stopped operator never blocks pod creation."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from circuitgate_devkit.cluster.accounts import PEERED
from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.act.api import KubeApi
from circuitgate_operator.names import CONDITION_TYPE
from circuitgate_operator.webhook import cluster_role_owner, shared_certificate

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
    expressions = webhook["namespaceSelector"].get("matchExpressions") or [{}]
    return cluster.namespace in expressions[0].get("values", ())


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


def peered_webhook_operators(
    start: Callable[..., OperatorProcess],
) -> tuple[OperatorProcess, OperatorProcess]:
    """Two replicas with the webhook behind one peering object: high acts, low stands by."""
    common = (*PEERED, "--webhook",
              "--webhook-host", "127.0.0.1", "--webhook-listen", "127.0.0.1")  # fmt: skip
    high = start(*common, "--priority", "200", "--webhook-port", str(free_port()),
                 standalone=False, name="high")  # fmt: skip
    low = start(*common, "--priority", "100", "--webhook-port", str(free_port()),
                standalone=False, name="low")  # fmt: skip
    return high, low


def webhook_port(cluster: Cluster, name: str) -> int | None:
    config = configuration(cluster, name)
    if config is None:
        return None
    url = config["webhooks"][0]["clientConfig"].get("url", "")
    return int(url.split(":")[2].split("/")[0]) if url else None


def test_a_standby_replica_never_touches_the_configuration_and_drift_is_undone(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """A second replica once rewrote the configuration with its own URL, CA and an empty
    namespace selector, and deleted it when stopped: new worker pods then got no gate."""
    high, low = peered_webhook_operators(start_operator)
    name = high.webhook_name
    cluster.policy()
    eventually(lambda: serves(cluster, name), what="the webhook configuration")
    eventually(lambda: webhook_port(cluster, name) == high.webhook_port, what="the active's URL")
    # The standby has started and had every chance to write: its liveness answers, and the
    # active replica has reconciled twice since.
    high.settle(f"{cluster.namespace}/workers")
    assert webhook_port(cluster, name) == high.webhook_port and serves(cluster, name)

    low.stop(signal.SIGTERM)
    assert configuration(cluster, name) is not None  # a standby's exit leaves it alone
    assert serves(cluster, name)
    assert new_pod(cluster, "after-standby", {"app": "worker"}) == [CONDITION_TYPE]

    # An admin (or another tool) corrupts it: the active replica restores it.
    cluster.control_plane.kubectl(
        "patch", "mutatingwebhookconfiguration", name, "--type=json", "-p",
        json.dumps([{"op": "replace", "path": "/webhooks/0/namespaceSelector",
                     "value": {"matchLabels": {"nobody": "here"}}}]),
    )  # fmt: skip
    eventually(lambda: serves(cluster, name), what="the corrupted configuration restored")
    cluster.control_plane.kubectl("delete", "mutatingwebhookconfiguration", name)
    eventually(lambda: serves(cluster, name), what="the deleted configuration restored")
    assert new_pod(cluster, "after-drift", {"app": "worker"}) == [CONDITION_TYPE]


def test_replicas_share_one_certificate_from_a_secret(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """Both replicas serve the certificate of one Secret, so whichever the API server reaches
    (the chart's Service fronts them all) is trusted by the one configured CA."""
    high, low = peered_webhook_operators(start_operator)
    cluster.policy()
    eventually(lambda: serves(cluster, high.webhook_name), what="the webhook configuration")
    config = configuration(cluster, high.webhook_name)
    assert config is not None
    ca = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
    context = ssl.create_default_context(cadata=ca.decode())
    for process in (high, low):
        assert process.webhook_port is not None
        with (
            socket.create_connection(("127.0.0.1", process.webhook_port), 5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() is not None  # the handshake verified against the one CA
    # Behind the chart's Service the API server may ask either; the standby's view is frozen
    # (it never saw the policy), and it must still answer with the gate.
    for process in (high, low):
        assert review(process, cluster.namespace, context) == [CONDITION_TYPE]


def review(process: OperatorProcess, namespace: str, context: ssl.SSLContext) -> list[str]:
    """The readiness gates a pod would get from this replica's webhook, asked directly."""
    pod = {"metadata": {"name": "asked", "namespace": namespace, "labels": {"app": "worker"}},
           "spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}  # fmt: skip
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "review-1", "operation": "CREATE", "namespace": namespace, "object": pod,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "userInfo": {"username": "tester"}, "dryRun": False,
        },
    }  # fmt: skip
    request = urllib.request.Request(
        f"https://127.0.0.1:{process.webhook_port}/inject-readiness-gate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        response = json.loads(answer.read())["response"]
    assert response["allowed"] is True
    patch = json.loads(base64.b64decode(response.get("patch") or "W10="))
    gates = [op["value"] for op in patch if op["path"] == "/spec/readinessGates"]
    return [gate["conditionType"] for gate in (gates[0] if gates else [])]


def test_replicas_starting_together_make_one_certificate(cluster: Cluster) -> None:
    """Create-or-get: every replica racing at start-up ends with the same certificate, in a
    Secret the release's ClusterRole owns (so helm uninstall removes it); one made for
    another host is replaced."""
    secret = f"{cluster.namespace}/webhook-certificate"
    role = f"{cluster.namespace}-owner"
    cluster.control_plane.kubectl("create", "clusterrole", role, "--verb=get", "--resource=pods")

    async def race() -> tuple[list[dict[str, bytes]], dict[str, bytes], dict[str, str]]:
        api = KubeApi(cluster.control_plane.api_client())
        try:
            owner = await cluster_role_owner(api, role)
            made = await asyncio.gather(
                *(shared_certificate(api, secret, "127.0.0.1", owner=owner) for _ in range(4))
            )
            moved = await shared_certificate(api, secret, "127.0.0.2", owner=owner)
            return list(made), moved, owner
        finally:
            api.close()

    try:
        (first, *others), moved, owner = asyncio.run(race())
        assert all(other == first for other in others)
        assert moved["ca.crt"] != first["ca.crt"]
        stored = cluster.core.read_namespaced_secret("webhook-certificate", cluster.namespace)
        assert base64.b64decode(stored.data["ca.crt"]) == moved["ca.crt"]
        (reference,) = stored.metadata.owner_references
        assert (reference.kind, reference.name, reference.uid) == ("ClusterRole", role,
                                                                   owner["uid"])  # fmt: skip
    finally:
        cluster.control_plane.kubectl("delete", "clusterrole", role, check=False)
