"""Acting as a ServiceAccount on the test control plane: a real token, not impersonation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from circuitgate_devkit.cluster.control_plane import ControlPlane

__all__ = ("refusals", "refused_samples", "service_account_kubeconfig")

# How a refused request shows in the operator's log: kopf's "APIForbiddenError ... status=403"
# and "Not enough permissions", the API server's "... is forbidden: User ...", and our own
# ApiError ("403: ..."). A bare 403 counts only as a word of its own: not in 127.0.0.1:40312,
# nor in a timestamp's milliseconds (",403").
_REFUSAL = re.compile(r"forbidden|not enough permissions|(?<![\w.,])403(?![\w.])", re.IGNORECASE)
# Not a permission: the API server's NamespaceLifecycle admission refuses (403) anything new in
# a namespace being deleted, such as an Event about a policy that a finished test left behind.
_NOT_RBAC = re.compile(r"because it is being terminated")


def service_account_kubeconfig(
    control_plane: ControlPlane, namespace: str, name: str, path: Path, *, hours: int = 1
) -> Path:
    """Write a kubeconfig that authenticates as the ServiceAccount with a token minted by the
    TokenRequest API (``kubectl create token``), the credential an in-cluster pod gets.

    Give it to a process as KUBECONFIG (the operator's client loads it when it is not in a
    cluster) or to kubectl as --kubeconfig.
    """
    token = control_plane.kubectl(
        "create", "token", name, "--namespace", namespace, f"--duration={hours}h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "circuitgate-test",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority": str(control_plane.ca_file),
                },
            }
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "circuitgate-test", "user": name, "namespace": namespace},
            }
        ],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def refusals(log: str) -> list[str]:
    """The lines of an operator's log that tell of a request the API server refused for want
    of a permission."""
    return [
        line for line in log.splitlines() if _REFUSAL.search(line) and not _NOT_RBAC.search(line)
    ]


def refused_samples(samples: Mapping[str, float]) -> list[str]:
    """Samples of an operator's /metrics (keyed ``name{labels}``) counting API requests answered
    403: any non-zero sample with a ``status`` or ``code`` label of 403."""
    return [
        f"{key} {value:g}"
        for key, value in samples.items()
        if value and re.search(r'[{,](status|code)="403"', key)
    ]
