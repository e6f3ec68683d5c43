"""The CircuitPolicy schema on the real API server: label selectors must be valid Kubernetes
label keys and values, or a policy would be accepted and silently match nothing; the
defaults it fills in are the ones the operator reads an unset field as."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_operator.model import OutlierDetection, parse_outlier_detection

pytestmark = pytest.mark.cluster

GROUP, VERSION = "circuitgate.io", "v1alpha1"
LONG_PREFIX = ".".join(["a" * 63] * 4) + "b"  # 256 characters: a DNS subdomain is at most 253


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, crds: list[str]) -> Iterator[ApiClient]:
    with control_plane.api_client() as api_client:
        yield api_client


def create(api: ApiClient, selector: dict[str, Any], node_selector: dict[str, str]) -> None:
    """A dry-run create of a policy with these selectors, strictly validated."""
    create_policy(api, selector=selector, nodeRemediation={"nodeSelector": node_selector})


def create_policy(api: ApiClient, **spec: Any) -> dict[str, Any]:
    """A dry-run create of a policy with this spec, strictly validated; the defaulted body."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CircuitPolicy",
        "metadata": {"name": "checked"},
        "spec": {"selector": GOOD, "endpoint": {"port": 8000}, **spec},
    }
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, "default", "circuitpolicies", body, dry_run="All", field_validation="Strict"
    )
    return created


GOOD = {"matchLabels": {"app": "worker"}}


def expressions(key: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": "In", "values": list(values)}]}


# Each row: a selector and a node selector, one of them malformed, and the field the API
# server's error must name.
MALFORMED = [
    pytest.param(
        {"matchLabels": {"app": "bad value!"}}, {}, "spec.selector.matchLabels.app", id="value"
    ),
    pytest.param(
        {"matchLabels": {"app": "a" * 64}}, {}, "spec.selector.matchLabels.app", id="value-64"
    ),
    pytest.param(
        {"matchLabels": {"app": "-worker"}}, {}, "spec.selector.matchLabels.app", id="value-dash"
    ),
    pytest.param({"matchLabels": {"bad key!": "x"}}, {}, "spec.selector.matchLabels", id="key"),
    pytest.param({"matchLabels": {"a" * 64: "x"}}, {}, "spec.selector.matchLabels", id="key-64"),
    pytest.param(
        {"matchLabels": {f"{LONG_PREFIX}/app": "x"}},
        {},
        "spec.selector.matchLabels",
        id="key-prefix-254",
    ),
    pytest.param(
        {"matchLabels": {"Example.com/app": "x"}},
        {},
        "spec.selector.matchLabels",
        id="key-prefix-uppercase",
    ),
    pytest.param(
        expressions("bad key!", "x"), {}, "spec.selector.matchExpressions[0].key", id="expr-key"
    ),
    pytest.param(
        expressions(f"{LONG_PREFIX}/app", "x"),
        {},
        "spec.selector.matchExpressions[0].key",
        id="expr-key-prefix-254",
    ),
    pytest.param(
        expressions("app", "ok", "bad value!"),
        {},
        "spec.selector.matchExpressions[0].values[1]",
        id="expr-value",
    ),
    pytest.param(
        GOOD, {"pool": "bad value!"}, "spec.nodeRemediation.nodeSelector.pool", id="node-value"
    ),
    pytest.param(GOOD, {"bad key!": "x"}, "spec.nodeRemediation.nodeSelector", id="node-key"),
]


@pytest.mark.parametrize(("selector", "node_selector", "field"), MALFORMED)
def test_malformed_label_selector_is_rejected_naming_the_field(
    api: ApiClient, selector: dict[str, Any], node_selector: dict[str, str], field: str
) -> None:
    with pytest.raises(ApiException) as raised:
        create(api, selector, node_selector)
    assert raised.value.status in {400, 422}, raised.value.body
    message = json.loads(raised.value.body)["message"]
    # The path itself, not a longer one it prefixes.
    assert re.search(re.escape(field) + r'[:"]', message), message


@pytest.mark.parametrize(
    ("selector", "node_selector"),
    [
        pytest.param(
            {"matchLabels": {"app.kubernetes.io/name": "worker", "tier": "", "v": "1.2_b-c"}},
            {"kubernetes.io/hostname": "node-1", "topology.kubernetes.io/zone": "eu-west-1a"},
            id="labels",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "example.com/pool", "operator": "NotIn", "values": ["gpu", ""]},
                    {"key": "A_b.c-D", "operator": "Exists"},
                ]
            },
            {},
            id="expressions",
        ),
        pytest.param(
            {"matchLabels": {f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 61}/{'e' * 63}": "f" * 63}},
            {"a" * 63: "g" * 63},
            id="longest",
        ),
        pytest.param(
            # A prefix's labels are not limited to 63 characters each, only the whole to 253.
            {"matchLabels": {f"{'a' * 64}.example.com/app": "x", f"{'x' * 64}/app": "y"}},
            {f"{'a' * 253}/b": "z"},
            id="long-prefix-labels",
        ),
        pytest.param(
            {"matchExpressions": [{"key": f"{'a' * 253}/b", "operator": "Exists"}]},
            {},
            id="expr-long-prefix-label",
        ),
    ],
)
def test_valid_label_selectors_are_accepted(
    api: ApiClient, selector: dict[str, Any], node_selector: dict[str, str]
) -> None:
    create(api, selector, node_selector)


def test_outlier_detections_defaults_are_the_operators_and_bad_values_name_the_field(
    api: ApiClient,
) -> None:
    defaulted = create_policy(api)["spec"]["outlierDetection"]
    assert parse_outlier_detection(defaulted) == OutlierDetection()
    enabled = create_policy(api, outlierDetection={"enabled": True})["spec"]["outlierDetection"]
    assert parse_outlier_detection(enabled) == OutlierDetection(enabled=True)
    for bad, field in (
        ({"enforcingPercent": 101}, "spec.outlierDetection.enforcingPercent"),
        ({"failureRate": {"minimum": 2}}, "spec.outlierDetection.failureRate.minimum"),
        ({"duration": {"factor": 0.5}}, "spec.outlierDetection.duration.factor"),
        ({"stdevs": 0}, "spec.outlierDetection.stdevs"),
        ({"minCalls": 0}, "spec.outlierDetection.minCalls"),
    ):
        with pytest.raises(ApiException) as refused:
            create_policy(api, outlierDetection=bad)
        assert refused.value.status == 422 and field in json.loads(refused.value.body)["message"]
