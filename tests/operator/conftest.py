"""Fixtures for every operator test: worker endpoints served by a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.fake_endpoints import FakeWorkers
from circuitgate_devkit.cluster.objects import Cluster


@pytest.fixture(scope="session")
def fake_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWorkers]:
    """One process serving the breaker endpoint on as many loopback addresses as asked."""
    workers = FakeWorkers(Path(tmp_path_factory.mktemp("fake-workers"))).start()
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture
def cluster(
    control_plane: ControlPlane, crds: list[str], namespace: str, fake_workers: FakeWorkers
) -> Iterator[Cluster]:
    """The test's namespace on the real API server, with worker endpoints to give pods."""
    helper = Cluster(control_plane, namespace, fake_workers)
    try:
        yield helper
    finally:
        helper.close()
