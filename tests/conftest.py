"""Shared fixtures for the whole test tree."""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest

# control_plane, crds, namespace: a real etcd + kube-apiserver, one per session.
# node_cluster: a control plane with one real node (kubelet + containerd), one per session.
pytest_plugins = ["circuitgate_devkit.cluster.fixtures", "circuitgate_devkit.node.fixtures"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped by SIGTERM (a CI job cancelled, ``kill``) tears its fixtures down as
    Ctrl-C does: Python's default would exit at once and leave the node's pods, shims and
    network namespaces behind, which the next run then refuses to start beside."""
    signal.signal(signal.SIGTERM, _interrupt)
    # Processes a test forks keep the default, as the code they run expects.
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
