"""Acting as a ServiceAccount on the test control plane: a real token, not impersonation."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.cluster.control_plane import ControlPlane

__all__ = ("service_account_kubeconfig",)


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
