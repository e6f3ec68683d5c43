"""examples/manifests/ as the suites with a real kubelet apply them: the images they built,
pulled from nowhere, short tasks, and node remediation on after two trips on one node (the
example's policy keeps it off)."""

from __future__ import annotations

from typing import Any

import yaml

from circuitgate_devkit.paths import REPO

__all__ = ("MANIFESTS", "example_objects")

MANIFESTS = REPO / "examples" / "manifests"


def example_objects(
    *,
    worker_image: str,
    redis_image: str,
    task_seconds: float = 3.0,
    cooldown_seconds: int = 3600,
) -> list[dict[str, Any]]:
    objects = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for item in objects:
        if item["kind"] == "Deployment":
            for container in item["spec"]["template"]["spec"]["containers"]:
                container["imagePullPolicy"] = "Never"
                if item["metadata"]["name"] == "redis":
                    container["image"] = redis_image
                else:
                    container["image"] = worker_image
                    container["env"].append(
                        {"name": "EXAMPLE_TASK_SECONDS", "value": str(task_seconds)}
                    )
        if item["kind"] == "CircuitPolicy":
            item["spec"]["nodeRemediation"].update(
                enabled=True, tripThreshold=2, minDistinctPods=1, cooldownSeconds=cooldown_seconds
            )
    return objects
