"""The chart, rendered with ``helm template`` and linted: what each value turns into."""

from __future__ import annotations

import filecmp
import importlib.util
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from circuitgate_devkit.cluster.helm import (
    CHART,
    CRD_DIR,
    NAMESPACE,
    find,
    helm,
    kinds,
    render,
    render_error,
)
from circuitgate_devkit.cluster.helm import rules as granted
from circuitgate_devkit.paths import REPO
from circuitgate_operator.__main__ import parse_args

EVERYTHING: dict[str, Any] = {
    "replicas": 2,
    "peering": {"enabled": True},
    "nodeRemediation": {"enabled": True, "evictPods": True},
    "webhook": {"enabled": True},
}
NAMESPACED: dict[str, Any] = {**EVERYTHING, "watchNamespaces": ["team-a", "team-b"]}
# The Role (in the release's namespace) for the webhook certificate's Secret.
CERTIFICATE_ROLE = "-webhook-certificate"


def container(manifest: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = find(manifest, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


@pytest.mark.parametrize("values", [{}, EVERYTHING, NAMESPACED], ids=["defaults", "all", "ns"])
def test_lint_is_clean(values: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm("lint", "--strict", str(CHART), "--values", str(path))
    assert "0 chart(s) failed" in result.stdout


def test_chart_crds_are_the_project_crds_plus_kopf_peering() -> None:
    ours = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    in_chart = sorted(p.name for p in (CHART / "crds").iterdir())
    assert in_chart == sorted([*ours, "kopf-peerings.yaml"]), "chart crds/ holds other files"
    _, mismatch, errors = filecmp.cmpfiles(CRD_DIR, CHART / "crds", ours, shallow=False)
    assert not mismatch + errors, (
        f"charts/circuitgate-operator/crds/ differs from crds/ in {mismatch + errors}: "
        "cp crds/*.yaml charts/circuitgate-operator/crds/"
    )


def test_kopf_peering_crds_are_what_kopf_looks_for() -> None:
    from kopf._cogs.structs import references

    documents = yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text())
    crds = {(d["spec"]["group"], d["spec"]["names"]["plural"]): d for d in documents if d}
    for selector in (references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K):
        crd = crds[(selector.group, selector.any_name)]
        assert [v["name"] for v in crd["spec"]["versions"]] == [selector.version]
    scopes = {plural: crd["spec"]["scope"] for (_, plural), crd in crds.items()}
    assert scopes == {"clusterkopfpeerings": "Cluster", "kopfpeerings": "Namespaced"}


def test_defaults_render_an_account_its_cluster_role_and_the_deployment() -> None:
    manifest = render()
    assert kinds(manifest) == [
        "ClusterRole/",
        "ClusterRoleBinding/",
        f"Deployment/{NAMESPACE}",
        f"ServiceAccount/{NAMESPACE}",
    ]
    binding = find(manifest, "ClusterRoleBinding")
    account = find(manifest, "ServiceAccount")
    assert binding["roleRef"]["name"] == find(manifest, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = find(manifest, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True


def test_the_pod_is_locked_down() -> None:
    manifest = render()
    pod = find(manifest, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(manifest)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = container(manifest)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    # The one writable place, for temporary files and the webhook certificate.
    assert [m["mountPath"] for m in container(manifest)["volumeMounts"]] == ["/tmp"]


@pytest.mark.parametrize("values", [{}, EVERYTHING, NAMESPACED], ids=["defaults", "all", "ns"])
def test_the_operator_accepts_its_arguments_and_the_probes_ask_kopf(values: dict[str, Any]) -> None:
    operator = container(render(values))
    args = parse_args(operator["args"])
    liveness = urlsplit(args.liveness)
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert liveness.port == ports["health"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = operator[probe]["httpGet"]
        assert (get["port"], get["path"]) == ("health", liveness.path)
    assert args.metrics == f"0.0.0.0:{ports['metrics']}"


def test_defaults_run_one_standalone_replica_for_all_namespaces() -> None:
    manifest = render()
    deployment = find(manifest, "Deployment")
    args = parse_args(container(manifest)["args"])
    assert deployment["spec"]["replicas"] == 1
    assert args.all_namespaces and args.standalone and args.webhook is False
    # Two standalone operators must never overlap during an update.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_node_actions_are_granted_only_when_enabled() -> None:
    assert not {r for r in granted(render()) if r.endswith(":patch") and "/nodes" in r}
    assert not {r for r in granted(render()) if "eviction" in r}
    nodes_only = granted(render({"nodeRemediation": {"enabled": True}}))
    assert "/nodes:patch" in nodes_only
    assert not {r for r in nodes_only if "eviction" in r}
    evicting = granted(render({"nodeRemediation": {"enabled": True, "evictPods": True}}))
    assert {"/nodes:patch", "/pods/eviction:create"} <= evicting


def test_default_cluster_role_is_exactly_what_the_operator_uses() -> None:
    assert granted(render()) == {
        "apiextensions.k8s.io/customresourcedefinitions:list",
        "apiextensions.k8s.io/customresourcedefinitions:watch",
        *(f"/nodes:{verb}" for verb in ("get", "list", "watch")),
        *(f"/pods:{verb}" for verb in ("get", "list", "watch")),
        "/pods/status:patch",
        *(f"/events:{verb}" for verb in ("create", "get", "patch")),
        *(f"circuitgate.io/circuitpolicies:{verb}" for verb in ("get", "list", "watch", "patch")),
        "circuitgate.io/circuitpolicies/status:patch",
        *(
            f"circuitgate.io/circuitstates:{verb}"
            for verb in ("get", "list", "watch", "create", "delete")
        ),
        "circuitgate.io/circuitstates/status:patch",
    }


def test_peering_creates_the_peering_object_and_rolls_updates() -> None:
    manifest = render(EVERYTHING)
    deployment = find(manifest, "Deployment")
    peering = find(manifest, "ClusterKopfPeering")
    args = parse_args(container(manifest)["args"])
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert args.peering == peering["metadata"]["name"] and not args.standalone
    name = peering["metadata"]["name"]
    assert {
        "kopf.dev/clusterkopfpeerings:list",
        "kopf.dev/clusterkopfpeerings:watch",
        f"kopf.dev/clusterkopfpeerings:patch={name}",
    } <= granted(manifest)
    env = {e["name"]: e.get("valueFrom") for e in container(manifest)["env"]}
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_webhook_service_reaches_the_operator_and_rbac_names_its_configuration() -> None:
    manifest = render(EVERYTHING)
    service = find(manifest, "Service")
    operator = container(manifest)
    args = parse_args(operator["args"])
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert args.webhook is True
    assert args.webhook_host == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    assert args.webhook_port == ports["webhook"] == service["spec"]["ports"][0]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    labels = find(manifest, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    env = {e["name"]: e.get("value") for e in operator["env"]}
    name = env["CIRCUITGATE_WEBHOOK_NAME"]
    webhook_rules = {r for r in granted(manifest) if "mutatingwebhookconfigurations" in r}
    assert webhook_rules == {
        "admissionregistration.k8s.io/mutatingwebhookconfigurations:create",
        *(
            f"admissionregistration.k8s.io/mutatingwebhookconfigurations:{verb}={name}"
            for verb in ("get", "update", "delete")
        ),
    }


def test_watching_some_namespaces_grants_namespaced_rights_there_only() -> None:
    manifest = render(NAMESPACED)
    args = parse_args(container(manifest)["args"])
    assert args.namespace == ["team-a", "team-b"]
    cluster = granted(manifest)
    assert not {r for r in cluster if "/pods" in r or "circuitgate.io" in r or "events" in r}
    assert "/namespaces:watch" in cluster
    roles = {
        o["metadata"]["namespace"]: o
        for o in manifest
        if o["kind"] == "Role" and not o["metadata"]["name"].endswith(CERTIFICATE_ROLE)
    }
    # Events about nodes (cluster-wide objects) go to "default", as kubectl's do.
    assert sorted(roles) == ["default", "team-a", "team-b"]
    assert granted([roles["default"]], "Role") == {
        "/events:create",
        "/events:get",
        "/events:patch",
    }
    for namespace in ("team-a", "team-b"):
        rights = granted([roles[namespace]], "Role")
        assert {"/pods:watch", "/pods/status:patch", "/pods/eviction:create"} <= rights
        assert "kopf.dev/kopfpeerings:watch" in rights
    bindings = {
        o["metadata"]["namespace"]
        for o in manifest
        if o["kind"] == "RoleBinding" and not o["metadata"]["name"].endswith(CERTIFICATE_ROLE)
    }
    assert bindings == set(roles)
    peerings = {o["metadata"]["namespace"] for o in manifest if o["kind"] == "KopfPeering"}
    assert peerings == {"team-a", "team-b"}


@pytest.mark.parametrize("values", [EVERYTHING, NAMESPACED], ids=["all", "ns"])
def test_the_replicas_share_one_certificate_secret_and_may_touch_no_other(
    values: dict[str, Any],
) -> None:
    manifest = render(values)
    env = {e["name"]: e.get("value") for e in container(manifest)["env"]}
    namespace, _, secret = env["CIRCUITGATE_WEBHOOK_SECRET"].partition("/")
    assert namespace == NAMESPACE
    (role,) = [o for o in manifest if o["kind"] == "Role" and
               o["metadata"]["name"].endswith(CERTIFICATE_ROLE)]  # fmt: skip
    assert role["metadata"]["namespace"] == NAMESPACE
    assert granted([role], "Role") == {
        "/secrets:create", f"/secrets:get={secret}", f"/secrets:update={secret}",
    }  # fmt: skip
    (binding,) = [o for o in manifest if o["kind"] == "RoleBinding" and
                  o["metadata"]["name"] == role["metadata"]["name"]]  # fmt: skip
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert not {r for r in granted(manifest) if "secrets" in r}  # nothing cluster-wide
    without = render({**values, "webhook": {"enabled": False}})
    assert not [o for o in without if o["metadata"]["name"].endswith(CERTIFICATE_ROLE)]


def test_an_image_digest_wins_over_the_tag() -> None:
    digest = "sha256:" + "ab" * 32
    image = container(render({"image": {"tag": "1.2.3", "digest": digest}}))["image"]
    assert image == f"circuitgate-operator@{digest}"
    assert container(render({"image": {"tag": "1.2.3"}}))["image"] == "circuitgate-operator:1.2.3"


# Each row: bad values, and what helm's answer must say about them.
BAD_VALUES = [
    pytest.param({"replicas": 2}, "replicas above 1 need peering.enabled=true", id="replicas"),
    pytest.param(
        {"nodeRemediation": {"evictPods": True}},
        "nodeRemediation.evictPods=true needs nodeRemediation.enabled=true",
        id="evict-without-nodes",
    ),
    pytest.param({"replicas": -1}, "at '/replicas': minimum", id="replicas-negative"),
    pytest.param(
        {"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'", id="pull-policy"
    ),
    pytest.param({"image": {"digest": "md5:00"}}, "at '/image/digest'", id="digest"),
    pytest.param({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'", id="namespace"),
    pytest.param({"webhook": {"port": 443}}, "at '/webhook/port': minimum", id="low-port"),
    pytest.param({"nodeRemediaton": {}}, "'nodeRemediaton' not allowed", id="typo"),
    pytest.param({"peering": {"enable": True}}, "'enable' not allowed", id="nested-typo"),
    pytest.param({"resources": {"limits": {"memory": "lots"}}}, "memory", id="quantity"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_schema_refuses_bad_values_saying_which_and_why(
    values: dict[str, Any], message: str
) -> None:
    assert message in render_error(values)


def schema_leaves(schema: dict[str, Any], path: str = "") -> dict[str, dict[str, Any]]:
    """Each value the schema describes, by dotted path; objects with fixed keys are walked."""
    found: dict[str, dict[str, Any]] = {}
    for key, child in schema.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        if child.get("additionalProperties") is False and "properties" in child:
            found |= schema_leaves(child, child_path)
        found[child_path] = child
    return found


def values_paths(values: dict[str, Any], path: str = "") -> set[str]:
    found = set()
    for key, value in values.items():
        child_path = f"{path}.{key}" if path else key
        found.add(child_path)
        if isinstance(value, dict) and value and child_path not in FREE_MAPS:
            found |= values_paths(value, child_path)
    return found


# Maps whose keys are not values of their own.
FREE_MAPS = {"resources.requests", "resources.limits"}


def test_every_value_is_in_values_yaml_and_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    leaves = schema_leaves(schema)
    assert values_paths(values) == set(leaves)
    undescribed = [path for path, child in leaves.items() if not child.get("description")]
    assert not undescribed, f"values without a description in values.schema.json: {undescribed}"


def test_docs_chart_values_reference_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_chart_reference", REPO / "hack" / "gen_chart_reference.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.check(), (
        "docs/reference/chart-values.md is stale: run python hack/gen_chart_reference.py"
    )
    stale = tmp_path / "chart-values.md"
    stale.write_text(generator.PAGE.read_text().replace("| `replicas` |", "| `replica` |"))
    assert not generator.check(stale)
