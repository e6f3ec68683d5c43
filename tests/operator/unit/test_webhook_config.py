"""The MutatingWebhookConfiguration the operator keeps: fail open, only policy namespaces."""

from __future__ import annotations

import base64

from circuitgate_operator.webhook import client_config, owned_by_cluster_role, webhook_configuration


def test_an_in_cluster_host_is_called_through_its_service() -> None:
    config = client_config("https://cg-webhook.circuitgate.svc:9443", b"CA")
    assert config == {
        "service": {
            "name": "cg-webhook",
            "namespace": "circuitgate",
            "port": 9443,
            "path": "/inject-readiness-gate",
        },
        "caBundle": base64.b64encode(b"CA").decode(),
    }
    assert client_config("https://127.0.0.1:9443", b"CA")["url"] == (
        "https://127.0.0.1:9443/inject-readiness-gate"
    )


def test_only_namespaces_with_policies_reach_it_and_it_fails_open() -> None:
    (webhook,) = webhook_configuration("cg", "https://127.0.0.1:1", b"CA", ["b", "a"])["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}
    ]
    (empty,) = webhook_configuration("cg", "https://127.0.0.1:1", b"CA", [])["webhooks"]
    assert empty["namespaceSelector"]["matchExpressions"][0]["values"] == ["circuitgate.invalid"]


def test_the_releases_cluster_role_owns_it_so_uninstall_removes_it_without_us() -> None:
    owner = owned_by_cluster_role("circuitgate-operator", "uid-1")
    config = webhook_configuration("cg", "https://127.0.0.1:1", b"CA", ["a"], owner=owner)
    assert config["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "name": "circuitgate-operator",
            "uid": "uid-1",
        }
    ]
    assert "ownerReferences" not in webhook_configuration("cg", "u", b"CA", [])["metadata"]
