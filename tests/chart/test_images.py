"""The images' recipes: each image holds one distribution; the operator image installs exactly
the lock (no Celery), runs as non-root from a pinned base, and the lock agrees with
operator/pyproject.toml and the chart."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml
from packaging.requirements import Requirement

from circuitgate_devkit.cluster.helm import CHART
from circuitgate_devkit.paths import REPO

DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "operator.Dockerfile", REPO / "examples" / "worker" / "Dockerfile"]


def lock() -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of docker/operator.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = (DOCKER / "operator.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            requirement, *hashes = line.split()
            name, _, version = requirement.partition("==")
            pins[name] = (version, [h.removeprefix("--hash=sha256:") for h in hashes])
    return pins


def project(distribution: str = "operator") -> dict[str, Any]:
    path = REPO / distribution / "pyproject.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text())["project"]
    return data


def test_lock_pins_every_operator_dependency_within_pyproject_ranges() -> None:
    pins = lock()
    for line in project()["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} missing from docker/operator.lock: python docker/lock.py"
        assert pins[name][0] in requirement.specifier, f"{name}=={pins[name][0]} vs {line}"
    for name, (version, hashes) in pins.items():
        assert re.fullmatch(r"[a-z0-9.-]+", name) and version, name
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_operator_image_holds_no_celery() -> None:
    """The operator reads the workers' JSON document; Celery and its stack stay out of it."""
    worker_stack = {"celery", "kombu", "billiard", "pybreaker", "amqp", "vine", "circuitgate"}
    assert not worker_stack & lock().keys()
    declared = {Requirement(line).name for line in project()["dependencies"]}
    assert not worker_stack & declared


def test_each_image_copies_only_its_own_distribution() -> None:
    for dockerfile, own, other in [
        (DOCKER / "operator.Dockerfile", "operator", "worker"),
        (REPO / "examples" / "worker" / "Dockerfile", "worker", "operator"),
    ]:
        text = dockerfile.read_text()
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
        assert f"COPY {own} ./{own}" in text and f"./{own} " in text, dockerfile
        assert other not in ignore and f"COPY {other}" not in text, dockerfile
        assert "COPY pyproject.toml" not in text, "the root pyproject is the dev workspace"


def test_operator_image_installs_the_lock_with_hashes_and_checks_it() -> None:
    dockerfile = (DOCKER / "operator.Dockerfile").read_text()
    assert "COPY docker/operator.lock" in dockerfile
    assert "--require-hashes" in dockerfile and "--no-deps" in dockerfile
    assert "pip check" in dockerfile
    assert 'ENTRYPOINT ["circuitgate-operator"]' in dockerfile
    assert "circuitgate-operator" in project()["scripts"]
    assert "apt-get" not in dockerfile, "no system packages: certificates come from cryptography"


def test_images_are_non_root_from_a_pinned_base() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
        # Python's and Debian's releases pinned, not a moving "3.11-slim" or "latest".
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
        froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
        assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), dockerfile
        users = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
        assert users and int(users[-1][0]) != 0, f"{dockerfile} must end as a non-root uid"
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
        assert ignore.splitlines()[1] == "*", "the build context sends only what it allows"


def test_chart_runs_the_image_as_its_user_and_version() -> None:
    (user,) = re.findall(
        r"^USER (\d+):", (DOCKER / "operator.Dockerfile").read_text(), re.MULTILINE
    )
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {user}" in deployment
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project()["version"]
