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

_startup_key = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def node_cluster(request: pytest.FixtureRequest) -> Iterator[NodeCluster]:
    cluster = NodeCluster()
    try:
        cluster.start()
    except NodeUnavailable as error:
        pytest.fail(f"{error}\n`make test` installs and builds what the node needs", False)
    request.config.stash[_startup_key] = (
        f"node {cluster.node_name}: Ready {cluster.node_startup_seconds:.1f} s after start"
    )
    try:
        yield cluster
    finally:
        socket_path = cluster.files.containerd_socket
        cluster.stop()
        left = leftovers(socket_path, cluster.netns.path)
        assert not left, f"the node left behind: {left}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figure the docs quote for node start-up, measured by every run that used it."""
    line = terminalreporter.config.stash.get(_startup_key, None)
    if line:
        terminalreporter.write_line(line)
