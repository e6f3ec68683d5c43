"""``node_cluster``: a control plane with one real node, one per session, for tests marked
``node``. A pytest plugin (listed in tests/conftest.py).

Under CI=true nothing here skips: a node that cannot be built or started fails the test with
what was missing. At the end of the session the fixture checks that the node left nothing
behind (processes, pod cgroups, /run entries, its network namespace) and fails if it did.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import NodeCluster, NodeUnavailable
from .sweep import leftovers

__all__ = ["node_cluster"]


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    cluster = NodeCluster()
    try:
        cluster.start()
    except NodeUnavailable as error:
        pytest.fail(f"{error}\n`make test` installs and builds what the node needs", False)
    try:
        yield cluster
    finally:
        socket_path = cluster.files.containerd_socket
        cluster.stop()
        left = leftovers(socket_path, cluster.netns.path)
        assert not left, f"the node left behind: {left}"
