"""The node's start-up sweep on the real cgroup filesystem: what a killed node left (empty pod
cgroups) is reclaimed; what holds a process, or belongs to a running kubelet, is never touched."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from circuitgate_devkit.node.cluster import NodeCluster
from circuitgate_devkit.node.sweep import (
    CGROUP_ROOT,
    foreign_pod_cgroups,
    reclaim_empty_pod_cgroups,
    remove_empty_cgroups,
)

pytestmark = pytest.mark.node

NAME = "circuitgate-sweep-test"  # not "kubepods": that name is the session node's
HIERARCHY = CGROUP_ROOT / "pids"


@pytest.fixture
def stale() -> Iterator[Path]:
    """A cgroup tree shaped like a kubelet's pod cgroups, left by nobody."""
    if not HIERARCHY.is_dir():
        pytest.fail(f"no cgroup v1 pids hierarchy at {HIERARCHY}")
    top = HIERARCHY / NAME
    (top / "besteffort" / "pod1234").mkdir(parents=True)
    try:
        yield top
    finally:
        for directory in (top / "besteffort" / "pod1234", top / "besteffort", top):
            if directory.exists():
                directory.rmdir()


def test_an_empty_tree_is_removed_deepest_first(stale: Path) -> None:
    assert remove_empty_cgroups(NAME) == [stale]
    assert not stale.exists()


def test_a_tree_holding_a_process_stays(stale: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        (stale / "besteffort" / "pod1234" / "cgroup.procs").write_text(str(sleeper.pid))
        assert remove_empty_cgroups(NAME) == []
        assert foreign_pod_cgroups(NAME) == [stale]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_nothing_is_reclaimed_while_a_kubelet_runs(node_cluster: NodeCluster) -> None:
    pod_cgroups = foreign_pod_cgroups()
    assert pod_cgroups, "the running node's kubelet made no pod cgroups"
    assert reclaim_empty_pod_cgroups() == []
    assert foreign_pod_cgroups() == pod_cgroups
