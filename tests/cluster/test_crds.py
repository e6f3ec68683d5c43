"""The CRDs in a real kube-apiserver: they install, reject malformed policies by field, apply
defaults, and give `kubectl get` the columns users read."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.paths import REPO

pytestmark = pytest.mark.cluster

GROUP, VERSION = "circuitgate.io", "v1alpha1"
MINIMAL_SPEC: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "worker"}},
    "endpoint": {"port": 8000},
}
DELETE = object()


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, crds: list[str]) -> Iterator[ApiClient]:
    with control_plane.api_client() as api_client:
        yield api_client


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CircuitPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def minimal_spec_with(path: str, value: object) -> dict[str, Any]:
    """MINIMAL_SPEC with the dotted path set to value (or removed, for DELETE)."""
    spec = copy.deepcopy(MINIMAL_SPEC)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


def test_both_crds_are_established(control_plane: ControlPlane, crds: list[str]) -> None:
    assert crds == ["circuitpolicies.circuitgate.io", "circuitstates.circuitgate.io"]
    for name in crds:
        crd = json.loads(control_plane.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
    resources = control_plane.kubectl("api-resources", f"--api-group={GROUP}", "-o", "wide")
    rows = {line.split()[0]: line.split() for line in resources.stdout.splitlines()[1:]}
    assert "cpol" in rows["circuitpolicies"]
    assert "cstate" in rows["circuitstates"]
    # Both belong to the category, so `kubectl get circuitgate` lists them together.
    assert all("circuitgate" in row[-1].split(",") for row in rows.values())


# Each row: one malformed field on an otherwise minimal policy, and the field path the API
# server's error must name.
MALFORMED = [
    pytest.param("selector", DELETE, "spec.selector", id="selector-missing"),
    pytest.param("selector", {}, "spec.selector", id="selector-empty"),
    pytest.param(
        "selector",
        {"matchExpressions": [{"key": "app", "operator": "In"}]},
        "spec.selector.matchExpressions[0].values",
        id="selector-in-without-values",
    ),
    pytest.param(
        "selector",
        {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]},
        "spec.selector.matchExpressions[0].values",
        id="selector-exists-with-values",
    ),
    pytest.param(
        "selector",
        {"matchExpressions": [{"key": "app", "operator": "Like", "values": ["a"]}]},
        "spec.selector.matchExpressions[0].operator",
        id="selector-bad-operator",
    ),
    pytest.param("endpoint", DELETE, "spec.endpoint", id="endpoint-missing"),
    pytest.param("endpoint", {"path": "/circuit"}, "spec.endpoint.port", id="port-missing"),
    pytest.param("endpoint.port", 0, "spec.endpoint.port", id="port-zero"),
    pytest.param("endpoint.port", 70000, "spec.endpoint.port", id="port-too-high"),
    pytest.param("endpoint.port", "Circuit_Port", "spec.endpoint.port", id="port-bad-name"),
    pytest.param("endpoint.port", "8000", "spec.endpoint.port", id="port-name-all-digits"),
    pytest.param("endpoint.port", "a--b", "spec.endpoint.port", id="port-name-double-hyphen"),
    pytest.param("endpoint.path", "circuit", "spec.endpoint.path", id="path-not-absolute"),
    pytest.param("watch.mode", "push", "spec.watch.mode", id="watch-mode-unknown"),
    pytest.param("watch.pollIntervalSeconds", 0, "spec.watch.pollIntervalSeconds", id="poll-0"),
    pytest.param(
        "watch",
        {"mode": "poll", "pollIntervalSeconds": 5, "timeoutSeconds": 30},
        "spec.watch.timeoutSeconds",
        id="poll-timeout-longer-than-interval",
    ),
    pytest.param("watch.longPollSeconds", 301, "spec.watch.longPollSeconds", id="long-poll-301"),
    pytest.param(
        "readiness.conditionType", "Ready", "spec.readiness.conditionType", id="condition-type"
    ),
    pytest.param(
        "nodeRemediation.tripThreshold",
        0,
        "spec.nodeRemediation.tripThreshold",
        id="trip-threshold-zero",
    ),
    pytest.param(
        "nodeRemediation",
        {"tripThreshold": 2, "minDistinctPods": 3},
        "spec.nodeRemediation.minDistinctPods",
        id="distinct-pods-above-threshold",
    ),
    pytest.param(
        "nodeRemediation.windowSeconds",
        5,
        "spec.nodeRemediation.windowSeconds",
        id="window-too-short",
    ),
    pytest.param(
        "nodeRemediation.taint",
        {"effect": "Evict"},
        "spec.nodeRemediation.taint.effect",
        id="taint-effect",
    ),
    pytest.param(
        "nodeRemediation.taint",
        {"key": "not a key!"},
        "spec.nodeRemediation.taint.key",
        id="taint-key",
    ),
    pytest.param(
        "nodeRemediation",
        {"enabled": False, "evictTrippedPods": True},
        "spec.nodeRemediation.evictTrippedPods",
        id="evict-without-remediation",
    ),
    pytest.param("safety.maxUnreadyPods", "150%", "spec.safety.maxUnreadyPods", id="percent-150"),
    pytest.param("safety.maxUnreadyPods", -1, "spec.safety.maxUnreadyPods", id="unready-negative"),
    pytest.param(
        "safety.maxCordonedNodes", "ten", "spec.safety.maxCordonedNodes", id="not-percent"
    ),
    pytest.param("safety.stormThreshold", "0%", "spec.safety.stormThreshold", id="storm-0%"),
    pytest.param("dryRun", "yes", "spec.dryRun", id="dry-run-not-bool"),
    pytest.param("endpointt", {"port": 8000}, "spec.endpointt", id="unknown-field"),
]


@pytest.mark.parametrize(("path", "value", "field"), MALFORMED)
def test_malformed_policy_is_rejected_naming_the_field(
    api: ApiClient, path: str, value: object, field: str
) -> None:
    body = policy("malformed", minimal_spec_with(path, value))
    with pytest.raises(ApiException) as raised:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            "circuitpolicies",
            body,
            dry_run="All",
            field_validation="Strict",
        )
    assert raised.value.status in {400, 422}, raised.value.body
    message = json.loads(raised.value.body)["message"]
    # The path itself, not a longer one it prefixes: "spec.endpoint: Required value".
    assert re.search(re.escape(field) + r'[:"]', message), message


def test_minimal_policy_gets_defaults(api: ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "circuitpolicies", policy("minimal", MINIMAL_SPEC)
    )
    stored = objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "circuitpolicies", "minimal"
    )
    assert stored["spec"] == {
        "selector": {"matchLabels": {"app": "worker"}},
        "endpoint": {"port": 8000, "path": "/circuit"},
        "watch": {
            "mode": "stream",
            "pollIntervalSeconds": 10,
            "timeoutSeconds": 5,
            "longPollSeconds": 30,
        },
        "readiness": {"enabled": True, "conditionType": "circuitgate.io/circuit-closed"},
        "nodeRemediation": {
            "enabled": False,
            "tripThreshold": 3,
            "windowSeconds": 600,
            "minDistinctPods": 2,
            "taint": {"key": "circuitgate.io/tripped", "effect": "NoSchedule"},
            "cooldownSeconds": 900,
            "evictTrippedPods": False,
        },
        "safety": {"maxUnreadyPods": "25%", "maxCordonedNodes": 1, "stormThreshold": "50%"},
        "dryRun": False,
        "outlierDetection": {
            "enabled": False,
            "dryRun": False,
            "enforcingPercent": 100,
            "minPeers": 3,
            "minCalls": 20,
            "sustainSeconds": 60,
            "failureRate": {"enabled": True, "factor": 3, "minimum": 0.1},
            "duration": {"enabled": True, "factor": 3, "minimumSeconds": 1},
            "countTowardNodeTrips": False,
        },
    }


def test_named_port_and_percentages_are_accepted(api: ApiClient) -> None:
    spec = minimal_spec_with("endpoint.port", "circuit")
    spec["safety"] = {"maxUnreadyPods": 3, "maxCordonedNodes": "10%", "stormThreshold": "100%"}
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, "default", "circuitpolicies", policy("ok", spec), dry_run="All"
    )
    assert created["spec"]["endpoint"]["port"] == "circuit"
    assert created["spec"]["safety"]["maxCordonedNodes"] == "10%"


def test_circuit_state_rejects_unknown_state(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(state("w-1")))
    result = patch_status(
        control_plane, "circuitstate/w-1", namespace, {"state": "halfopen"}, check=False
    )
    assert result.returncode != 0
    assert "status.state" in result.stderr
    assert "half_open" in result.stderr  # the error lists the supported values


def state(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CircuitState",
        "metadata": {"name": name},
    }


def patch_status(
    control_plane: ControlPlane,
    name: str,
    namespace: str,
    status: dict[str, Any],
    *,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    patch = json.dumps({"status": status})
    return control_plane.kubectl(
        "patch", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch,
        check=check,
    )  # fmt: skip


def table(output: str) -> list[dict[str, str]]:
    header, *rows = output.splitlines()
    return [dict(zip(header.split(), row.split(), strict=True)) for row in rows]


def test_kubectl_get_shows_the_columns(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    kubectl = control_plane.kubectl
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(policy("workers", MINIMAL_SPEC)))
    counts = {"matchedPods": 4, "openCircuits": 1, "unreadyPods": 1, "cordonedNodes": 0}
    patch_status(control_plane, "circuitpolicy/workers", namespace, counts)
    opened = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    status_time = opened.isoformat().replace("+00:00", "Z")
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(state("worker-0")))
    status = {
        "pod": "worker-0",
        "node": "node-a",
        "policy": "workers",
        "breaker": "tasks",
        "state": "open",
        "failures": 5,
        "trips": 2,
        "lastTransitionTime": opened.isoformat().replace("+00:00", "Z"),
        "openedAt": opened.isoformat().replace("+00:00", "Z"),
        "mayCloseAt": None,
        "consumptionPaused": True,
        "endpoint": {"url": "http://127.0.0.11:8000/circuit", "reachable": True, "reason": ""},
        "sequence": 7,
        "outlier": {
            "verdict": "deviating", "breaker": "tasks", "measure": "failureRate", "value": 0.3,
            "peersMedian": 0.0, "peers": 3, "calls": 100, "since": status_time, "enforced": True,
        },
        "consumer": "paused",
    }  # fmt: skip
    patch_status(control_plane, "circuitstate/worker-0", namespace, status)

    (policy_row,) = table(kubectl("get", "circuitpolicies", "-n", namespace).stdout)
    assert list(policy_row) == ["NAME", "MATCHED", "OPEN", "CORDONED", "AGE"]
    assert [policy_row[k] for k in ("NAME", "MATCHED", "OPEN", "CORDONED")] == [
        "workers", "4", "1", "0",
    ]  # fmt: skip

    (state_row,) = table(kubectl("get", "circuitstates", "-n", namespace).stdout)
    assert list(state_row) == [
        "NAME", "POD", "NODE", "STATE", "FAILURES", "TRIPS", "LAST-TRANSITION", "AGE",
    ]  # fmt: skip
    assert state_row["POD"] == "worker-0"
    assert state_row["NODE"] == "node-a"
    assert state_row["STATE"] == "open"
    assert (state_row["FAILURES"], state_row["TRIPS"]) == ("5", "2")
    assert state_row["LAST-TRANSITION"] in {"5m", "5m1s", "5m2s"}, state_row

    # The short names and the category reach the same objects.
    wide = table(kubectl("get", "cstate", "-n", namespace, "-o", "wide").stdout)
    assert wide[0]["POLICY"] == "workers"
    assert wide[0]["REACHABLE"] == "true"
    assert wide[0]["OUTLIER"] == "deviating"
    assert wide[0]["CONSUMER"] == "paused"
    assert (
        "circuitpolicy.circuitgate.io/workers"
        in kubectl("get", "circuitgate", "-n", namespace).stdout
    )


def test_docs_policy_reference_matches_the_crd() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_crd_reference", REPO / "hack" / "gen_crd_reference.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.check(), (
        "docs/reference/circuitpolicy.md is stale: run python hack/gen_crd_reference.py"
    )
