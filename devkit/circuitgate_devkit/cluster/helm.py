"""The chart as tests see it: ``helm`` from the control plane's bin dir, and rendered objects."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from circuitgate_devkit.cluster.control_plane import CommandFailed, default_bin_dir, pinned_versions
from circuitgate_devkit.paths import CHART, CRD_DIR

__all__ = ("CHART", "CRD_DIR", "Manifest", "helm", "render", "render_error")

RELEASE = "circuitgate-operator"
NAMESPACE = "circuitgate-system"

Manifest = list[dict[str, Any]]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The pinned helm (built with the control plane), with its caches in a temporary folder.

    A missing binary fails the test with the command that builds it: never a skip.
    """
    binary = default_bin_dir() / "helm"
    if not os.access(binary, os.X_OK):
        raise AssertionError(f"{binary} missing: build it with `make control-plane`")
    with tempfile.TemporaryDirectory(prefix="circuitgate-helm-") as home:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }
        argv = [str(binary), *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
    return result


def values_file(values: Mapping[str, Any], directory: Path) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def _template_args(values: Mapping[str, Any], directory: Path) -> list[str]:
    return [
        "template", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        "--kube-version", pinned_versions()["K8S_VERSION"],
        "--values", str(values_file(values, directory)),
    ]  # fmt: skip


def render(values: Mapping[str, Any] | None = None) -> Manifest:
    """The objects ``helm template`` renders with these values (over the chart's defaults)."""
    with tempfile.TemporaryDirectory() as directory:
        result = helm(*_template_args(values or {}, Path(directory)))
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(values: Mapping[str, Any]) -> str:
    """What ``helm template`` says when it refuses these values (fails if it accepts them)."""
    with tempfile.TemporaryDirectory() as directory:
        result = helm(*_template_args(values, Path(directory)), check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def find(manifest: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of that kind (and name)."""
    (found,) = [o for o in manifest if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def kinds(manifest: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata'].get('namespace', '')}" for o in manifest)


def rules(manifest: Iterable[dict[str, Any]], kind: str = "ClusterRole") -> set[str]:
    """Every (resource, verb) a role grants, as 'group/resource:verb[=name,...]' strings."""
    granted = set()
    for role in manifest:
        if role["kind"] != kind:
            continue
        for rule in role["rules"]:
            names = ",".join(rule.get("resourceNames", []))
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        granted.add(f"{group}/{resource}:{verb}" + (f"={names}" if names else ""))
    return granted
