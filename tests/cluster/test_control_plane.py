"""The test control plane itself: the pinned version, and the controllers tests rely on."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from circuitgate_devkit.cluster.control_plane import ControlPlane, pinned_versions
from circuitgate_devkit.waiting import eventually

pytestmark = pytest.mark.cluster


def gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_server_and_kubectl_report_the_pinned_version(control_plane: ControlPlane) -> None:
    pinned = pinned_versions()["K8S_VERSION"]
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned


def test_controller_manager_runs_the_controllers_tests_need(
    control_plane: ControlPlane, namespace: str
) -> None:
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        # serviceaccount-controller
        eventually(
            lambda: not gone(lambda: core.read_namespaced_service_account("default", namespace)),
            timeout=60,
            interval=0.2,
            what="the default ServiceAccount is created",
        )
        # garbage-collector-controller
        owner = core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
        )
        reference = client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
        )
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])
            ),
        )
        core.delete_namespaced_config_map("owner", namespace)
        eventually(
            lambda: gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
            timeout=60,
            interval=0.2,
            what="the garbage collector deletes the dependent",
        )
        # namespace-controller
        core.delete_namespace(namespace)
        eventually(
            lambda: gone(lambda: core.read_namespace(namespace)),
            timeout=60,
            interval=0.2,
            what="the namespace controller finishes deleting the namespace",
        )
