"""Fixtures for the operator's tests: worker endpoints served by a real process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane
from tests.operator.cluster import Cluster, OperatorProcess
from tests.operator.fake_workers import FakeWorkers


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


@pytest.fixture
def start_operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start ``python -m circuitgate_operator`` processes (for the test's namespace unless
    told otherwise); all are stopped at the end, and their logs shown if the test failed."""
    started: list[OperatorProcess] = []

    def start(*args: str, wait: bool = True, **kwargs: Any) -> OperatorProcess:
        kwargs.setdefault("namespace", namespace)
        process = OperatorProcess(control_plane, tmp_path, *args, **kwargs)
        started.append(process)
        return process.start(wait=wait)

    yield start
    for process in started:
        process.stop()
        print(f"--- {process.log.name}\n{process.tail(40)}")


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    """One operator for the test's namespace, standalone."""
    return start_operator()
