"""The MutatingWebhookConfiguration the operator keeps: fail open, only policy namespaces."""

from __future__ import annotations

import base64
import copy
import datetime

from circuitgate_operator.certificates import new_certificate, serves_host
from circuitgate_operator.webhook import (
    client_config,
    drifted,
    owned_by_cluster_role,
    webhook_configuration,
)


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


def test_what_the_api_server_adds_is_no_drift_and_anything_we_set_is() -> None:
    desired = webhook_configuration("cg", "https://127.0.0.1:1", b"CA", ["a"])
    served = copy.deepcopy(desired)
    served["metadata"].update(uid="u1", resourceVersion="7", generation=1)
    served["webhooks"][0]["objectSelector"] = {}  # a default the API server fills in
    assert not drifted(desired, served)
    for corrupt in (
        lambda c: c["webhooks"][0].update(namespaceSelector={}),
        lambda c: c["webhooks"][0]["clientConfig"].update(caBundle="b3RoZXI="),
        lambda c: c["webhooks"][0].update(failurePolicy="Fail"),
        lambda c: c["webhooks"].append(c["webhooks"][0]),
        lambda c: c["metadata"].pop("labels"),
    ):
        changed = copy.deepcopy(served)
        corrupt(changed)
        assert drifted(desired, changed)


def test_a_shared_certificate_for_another_host_or_near_expiry_is_not_served() -> None:
    pems = new_certificate("10.0.0.1")
    assert serves_host(pems, "10.0.0.1", margin=datetime.timedelta(days=30))
    assert not serves_host(pems, "10.0.0.2", margin=datetime.timedelta(days=30))
    assert not serves_host(pems, "10.0.0.1", margin=datetime.timedelta(days=400))
    assert not serves_host({"tls.crt": b"junk", "ca.crt": b"junk"}, "10.0.0.1",
                           margin=datetime.timedelta(0))  # fmt: skip
