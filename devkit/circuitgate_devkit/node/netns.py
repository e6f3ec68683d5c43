"""A network namespace of the test run's own: the node's address lives there and nowhere else.

Everything of the node (control plane, containerd, kubelet, pods) runs inside it, entered with
``nsenter --net`` (not ``ip netns exec``, which remounts /sys and hides the cgroup mounts).
The host's network is never changed: the namespace has no route out and no link to the host.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

__all__ = ("NetworkNamespace", "delete_namespaces")

_RUN_NETNS = Path("/run/netns")


def _ip(*args: str) -> None:
    run = subprocess.run(["ip", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {run.stderr.strip()}")


class NetworkNamespace:
    """``ip netns add`` plus a veth pair inside it carrying the node's address."""

    def __init__(
        self, name: str, address: str = "10.213.0.1", prefix: int = 24, routes: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.address = address
        self.prefix = prefix
        self.routes = routes

    @property
    def path(self) -> Path:
        return _RUN_NETNS / self.name

    def create(self) -> NetworkNamespace:
        if os.geteuid() != 0:
            raise PermissionError("a node needs root: network namespaces, mounts, cgroups")
        self.delete()
        _ip("netns", "add", self.name)
        inside = ("-n", self.name)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
        _ip(*inside, "addr", "add", f"{self.address}/{self.prefix}", "dev", "node0")
        _ip(*inside, "link", "set", "node0", "up")
        _ip(*inside, "link", "set", "node1", "up")
        for destination in self.routes:  # e.g. the Service range, which kube-proxy rewrites
            _ip(*inside, "route", "add", destination, "dev", "node0")
        return self

    def enter(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["nsenter", f"--net={self.path}", *argv]

    def delete(self) -> None:
        """Remove the namespace (its veth goes with it)."""
        if self.path.exists():
            with contextlib.suppress(RuntimeError):
                _ip("netns", "delete", self.name)


def delete_namespaces(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix``; return their names. For the
    namespaces of earlier nodes killed before they could stop (the caller holds the node lock,
    so none of them is live)."""
    names = sorted(p.name for p in _RUN_NETNS.glob(f"{prefix}*")) if _RUN_NETNS.is_dir() else []
    for name in names:
        NetworkNamespace(name).delete()
    return names
