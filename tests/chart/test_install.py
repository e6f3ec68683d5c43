"""The chart installed for real into the test API server, its permissions checked as its own
ServiceAccount, and everything it made removed again by ``helm uninstall``.

There is no kubelet and no scheduler, so the operator's pod stays pending; what runs the operator
is a local process holding the chart's ServiceAccount token (see
`circuitgate_devkit.cluster.service_accounts`). The real node suite (tests/node) runs it as a pod.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from circuitgate_devkit.cluster.accounts import OperatorIdentity
from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.helm import CHART, NAMESPACE, RELEASE
from circuitgate_devkit.cluster.objects import OperatorProcess
from circuitgate_devkit.cluster.service_accounts import service_account_kubeconfig
from circuitgate_devkit.paths import REPO
from tests.chart.test_chart import EVERYTHING, NAMESPACED

pytestmark = pytest.mark.cluster

ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
PERMISSIONS = CHART / "rbac-permissions.txt"
UPDATE = os.environ.get("CIRCUITGATE_UPDATE_RBAC") == "1"
NODE = "chart-test-node"
# Helm installs a chart's crds/ but never deletes them: they would take every user's objects.
# The API server registers an APIService for each of their group versions.
KEPT_ON_UNINSTALL = {
    *(
        f"apiextensions.k8s.io/v1/CustomResourceDefinition//{name}"
        for name in (
            "circuitpolicies.circuitgate.io",
            "circuitstates.circuitgate.io",
            "clusterkopfpeerings.kopf.dev",
            "kopfpeerings.kopf.dev",
        )
    ),
    "apiregistration.k8s.io/v1/APIService//v1alpha1.circuitgate.io",
    "apiregistration.k8s.io/v1/APIService//v1.kopf.dev",
}


@dataclass
class Release:
    control_plane: ControlPlane
    before: set[str]
    install_output: str
    workdir: Path

    def upgrade(self, values: dict[str, Any]) -> None:
        path = self.workdir / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        self.control_plane.helm(
            "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reset-values",
            "--values", str(path),
        )  # fmt: skip

    def can_i(self, verb: str, resource: str, namespace: str = "default") -> bool:
        """`resource` is TYPE, TYPE/NAME, or TYPE:SUBRESOURCE (kubectl reads TYPE/NAME)."""
        resource, _, subresource = resource.partition(":")
        result = self.control_plane.kubectl(
            "auth", "can-i", verb, resource, f"--subresource={subresource}",
            f"--as={ACCOUNT}", "-n", namespace, check=False,
        )  # fmt: skip
        assert result.stdout.strip() in {"yes", "no"}, result.stderr
        return result.stdout.strip() == "yes"

    def permissions(self, namespace: str = NAMESPACE) -> str:
        return self.control_plane.kubectl(
            "auth", "can-i", "--list", f"--as={ACCOUNT}", "-n", namespace
        ).stdout


def snapshot(control_plane: ControlPlane) -> set[str]:
    """Every object the API server lists (Events aside), as apiVersion/kind/namespace/name."""
    types = control_plane.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    types = [t for t in types if t.split(".")[0] != "events"]
    listing = control_plane.kubectl(
        "get", ",".join(types), "--all-namespaces", "-o",
        "jsonpath={range .items[*]}{.apiVersion}/{.kind}/{.metadata.namespace}/{.metadata.name}"
        "{'\\n'}{end}",
    )  # fmt: skip
    return set(listing.stdout.split())


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """The chart installed with its defaults into a namespace of its own."""
    control_plane.kubectl("create", "namespace", NAMESPACE)
    for watched in NAMESPACED["watchNamespaces"]:
        control_plane.kubectl("create", "namespace", watched)
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(_node()))
    before = snapshot(control_plane)
    installed = control_plane.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE)
    try:
        yield Release(control_plane, before, installed.stdout, tmp_path_factory.mktemp("chart"))
    finally:
        # The last test uninstalls; this only cleans up after a failure before it.
        control_plane.helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        control_plane.kubectl("delete", "node", NODE, check=False)
        for namespace in (NAMESPACE, *NAMESPACED["watchNamespaces"]):
            control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _node() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}


def test_install_creates_every_rendered_object_and_says_what_next(release: Release) -> None:
    plane = release.control_plane
    manifest = plane.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    assert {o["kind"] for o in objects} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    }
    found = plane.kubectl("get", "-f", "-", "-o", "name", input=manifest).stdout.split()
    assert len(found) == len(objects)
    plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s",
        "crd/circuitpolicies.circuitgate.io", "crd/circuitstates.circuitgate.io",
        "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev",
    )  # fmt: skip
    status = plane.helm("status", RELEASE, "--namespace", NAMESPACE, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    notes = release.install_output
    assert f"rollout status deployment/{RELEASE}" in notes
    assert "readinessGates" in notes and "kind: CircuitPolicy" in notes
    assert "Node remediation is off" in notes


def test_default_permissions_are_the_checked_in_list(release: Release) -> None:
    check_permissions("defaults", release.permissions())


def test_default_account_cannot_touch_nodes_or_evict(release: Release, tmp_path: Path) -> None:
    assert release.can_i("list", "nodes") and release.can_i("watch", "pods", "kube-system")
    assert release.can_i("patch", "pods:status", "kube-system")
    assert not release.can_i("patch", "nodes")
    assert not release.can_i("update", "nodes")
    assert not release.can_i("create", "pods:eviction")
    assert not release.can_i("delete", "pods")
    assert not release.can_i("get", "secrets")
    # Not only what RBAC says: the account's own token is refused by the API server.
    kubeconfig = service_account_kubeconfig(
        release.control_plane, NAMESPACE, RELEASE, tmp_path / "kubeconfig"
    )
    with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
        core = client.CoreV1Api(api_client)
        assert core.read_node(NODE).metadata.name == NODE
        with pytest.raises(ApiException) as refused:
            core.patch_node(NODE, {"spec": {"unschedulable": True}})
        assert refused.value.status == 403
        eviction = {"metadata": {"name": "any-pod", "namespace": NAMESPACE}}
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod_eviction("any-pod", NAMESPACE, eviction)
        assert refused.value.status == 403


def test_operator_runs_as_the_account_without_being_refused(
    release: Release, tmp_path: Path
) -> None:
    """A smoke test of the default permissions: the operator starts, lists and watches what
    it serves, reconciles a policy, and nothing is forbidden. Every scenario of tests/operator
    runs as the account of a release with all RBAC enabled too
    (`circuitgate_devkit.cluster.accounts`)."""
    kubeconfig = service_account_kubeconfig(
        release.control_plane, NAMESPACE, RELEASE, tmp_path / "kubeconfig"
    )
    identity = OperatorIdentity(kubeconfig, ACCOUNT, f"{RELEASE}.{NAMESPACE}", ())
    policy = {
        "apiVersion": "circuitgate.io/v1alpha1", "kind": "CircuitPolicy",
        "metadata": {"name": "smoke", "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": "none"}}, "endpoint": {"port": 9808}},
    }  # fmt: skip
    release.control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(policy))
    operator = OperatorProcess(identity, tmp_path).start()
    try:
        # Two reconciles of the policy: by then every watch has started and been answered.
        operator.settle(f"{NAMESPACE}/smoke")
        assert not operator.refusals(), operator.tail()
        # Deleted while the operator runs, so it takes its finalizer off.
        release.control_plane.kubectl(
            "delete", "circuitpolicy", "smoke", "-n", NAMESPACE, "--timeout=30s"
        )
    finally:
        operator.stop()


def test_watched_namespaces_grant_exactly_the_checked_in_list(release: Release) -> None:
    """With watchNamespaces, as the operator's scenarios (tests/operator) run: namespaced
    permissions only in the namespaces listed (and Events in "default", about nodes)."""
    release.upgrade(NAMESPACED)
    team_a, team_b = NAMESPACED["watchNamespaces"]
    check_permissions(
        f"watchNamespaces [{team_a}], nodeRemediation, evictPods, webhook, peering",
        release.permissions(team_a),
    )
    assert release.permissions(team_b).replace(team_b, team_a) == release.permissions(team_a)
    assert release.can_i("watch", "namespaces") and release.can_i("patch", "nodes")
    assert release.can_i("create", "pods:eviction", team_b)
    assert not release.can_i("create", "pods:eviction", "default")
    assert not release.can_i("list", "pods", "default")
    assert not release.can_i("patch", "pods:status", NAMESPACE)
    assert release.can_i("create", "events", "default")
    assert not release.can_i("list", "circuitpolicies.circuitgate.io", "default")
    assert release.can_i("patch", f"kopfpeerings.kopf.dev/{RELEASE}", team_a)
    assert not release.can_i("patch", "kopfpeerings.kopf.dev/someone-elses", team_a)
    assert not release.can_i("list", "clusterkopfpeerings.kopf.dev")
    release.control_plane.kubectl("get", "kopfpeering", RELEASE, "-n", team_b)


def test_everything_enabled_grants_exactly_the_checked_in_list(release: Release) -> None:
    release.upgrade(EVERYTHING)
    check_permissions("nodeRemediation, evictPods, webhook, peering", release.permissions())
    assert release.can_i("patch", "nodes")
    assert release.can_i("create", "pods:eviction", "kube-system")
    webhook = f"{RELEASE}.{NAMESPACE}"
    assert release.can_i("update", f"mutatingwebhookconfigurations/{webhook}")
    assert not release.can_i("update", "mutatingwebhookconfigurations/someone-elses")
    assert release.can_i("patch", f"clusterkopfpeerings.kopf.dev/{RELEASE}")
    assert not release.can_i("patch", "clusterkopfpeerings.kopf.dev/someone-elses")
    release.control_plane.kubectl("get", "clusterkopfpeering", RELEASE)


def test_uninstall_removes_everything_it_created(release: Release) -> None:
    plane = release.control_plane
    manifest = plane.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
    assert "kind: ClusterKopfPeering" in manifest
    plane.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    left = plane.kubectl("get", "-f", "-", "--ignore-not-found", "-o", "name", input=manifest)
    assert left.stdout.split() == []
    added = snapshot(plane) - release.before
    assert added <= KEPT_ON_UNINSTALL, sorted(added - KEPT_ON_UNINSTALL)


# -- the checked-in permissions ----------------------------------------------------------------

HEADER = """\
# What the operator's ServiceAccount may do, as `kubectl auth can-i --list` reports it on the
# real API server after `helm install` of this chart (with each set of values below): the
# operator's RBAC is the minimum its code uses, and a new verb needs a deliberate change here.
# Checked by tests/chart/test_install.py; after changing the RBAC, regenerate with
#   CIRCUITGATE_UPDATE_RBAC=1 python -m pytest tests/chart/test_install.py
# and review the difference. Rows from Kubernetes' default roles for every authenticated user
# (discovery, self-reviews) are included.
"""


def read_permissions(path: Path = PERMISSIONS) -> dict[str, str]:
    sections: dict[str, str] = {}
    name = ""
    for line in path.read_text().splitlines(keepends=True) if path.exists() else ():
        if line.startswith("## values: "):
            name = line.removeprefix("## values: ").strip()
            sections[name] = ""
        elif name:
            sections[name] += line
    return {key: value.rstrip("\n") + "\n" for key, value in sections.items()}


def write_permissions(sections: dict[str, str], path: Path = PERMISSIONS) -> None:
    body = "".join(f"\n## values: {name}\n{text}" for name, text in sections.items())
    path.write_text(HEADER + body)


def check_permissions(name: str, actual: str) -> None:
    sections = read_permissions()
    if UPDATE:
        write_permissions({**sections, name: actual})
        return
    assert name in sections, f"{PERMISSIONS} has no section '{name}'"
    assert actual == sections[name], (
        f"the account's permissions differ from {PERMISSIONS.relative_to(REPO)} ({name}); if the "
        "change is meant, regenerate it (see its header) and review the difference"
    )
