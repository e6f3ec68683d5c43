"""The examples a user copies: the worker app, its manifests, and what ties them together; the
manifests are accepted by the real API server (server-side dry run, with the CRDs installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.paths import REPO
from circuitgate_operator.names import CONDITION_TYPE

EXAMPLES = REPO / "examples"
MANIFESTS = EXAMPLES / "manifests"


def manifests() -> dict[str, dict[str, Any]]:
    """Every object of examples/manifests/, by kind/name."""
    found = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def worker_settings() -> dict[str, Any]:
    """The example app's circuitgate settings as circuitgate reads them at worker start, in a
    process of its own (the app is a top-level module named ``app``, as `celery -A app` wants)."""
    code = (
        "import json, app, circuitgate\n"
        "s = circuitgate.load_settings(app.app.conf)\n"
        "print(json.dumps({'port': s.endpoint_port, 'fail_max': s.fail_max,"
        " 'ignored': [e.__name__ for e in s.ignore_exceptions],"
        " 'tasks': sorted(t for t in app.app.tasks if t.startswith('example.')),"
        " 'steps': sorted(s.__name__ for s in app.app.steps['consumer'])}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=EXAMPLES / "worker",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    settings: dict[str, Any] = json.loads(result.stdout)
    return settings


def test_example_app_installs_circuitgate_with_valid_settings() -> None:
    settings = worker_settings()
    assert settings["tasks"] == ["example.infer"]
    assert settings["steps"] == ["ConsumerWatch", "ConsumptionGate", "ProbeStep"]
    assert settings["ignored"] == ["BadInput"]
    assert settings["fail_max"] == 3


def test_worker_deployment_declares_what_the_operator_and_kubelet_need() -> None:
    objects = manifests()
    deployment = objects["Deployment/celery-worker"]
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert pod["readinessGates"] == [{"conditionType": CONDITION_TYPE}]
    policy = objects["CircuitPolicy/celery-worker"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports[policy["endpoint"]["port"]] == worker_settings()["port"]
    assert worker["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": policy["endpoint"]["port"],
    }
    assert worker["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": policy["endpoint"]["port"],
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["selector"]["matchLabels"].items() <= labels.items()
    budget = objects["PodDisruptionBudget/celery-worker"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert pod["automountServiceAccountToken"] is False
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in worker["env"]}
    service = objects["Service/redis"]
    assert env["CELERY_BROKER_URL"].startswith(f"redis://{service['metadata']['name']}:6379/")


def test_worker_image_runs_the_example_app() -> None:
    dockerfile = (EXAMPLES / "worker" / "Dockerfile").read_text()
    assert "COPY examples/worker/app.py /app/app.py" in dockerfile
    assert '"celery", "-A", "app", "worker"' in dockerfile
    image = manifests()["Deployment/celery-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert image["image"].split(":")[0] in dockerfile  # the tag the build comment gives


@pytest.mark.cluster
def test_manifests_pass_server_side_dry_run(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "--namespace", namespace, "-f", str(MANIFESTS), "-o", "json"
    )
    applied = json.loads(result.stdout)["items"]
    assert sorted(f"{o['kind']}/{o['metadata']['name']}" for o in applied) == sorted(manifests())
    # The API server filled in the policy's defaults: it was read against the real CRD.
    (policy,) = [o for o in applied if o["kind"] == "CircuitPolicy"]
    assert policy["spec"]["watch"]["timeoutSeconds"] == 5
    assert policy["spec"]["nodeRemediation"]["taint"]["key"] == "circuitgate.io/tripped"
    # A dry run creates nothing.
    left = control_plane.kubectl(
        "get", "deployments,circuitpolicies", "-n", namespace, "-o", "name"
    )
    assert left.stdout.split() == []


def test_manifest_paths_are_the_ones_the_readme_names() -> None:
    readme = (REPO / "README.md").read_text()
    for path in sorted(MANIFESTS.glob("*.yaml")):
        assert str(path.relative_to(REPO)) in readme, f"README does not mention {path.name}"
