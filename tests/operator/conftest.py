"""Fixtures for every operator test: worker endpoints served by a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from circuitgate_devkit.cluster.fake_endpoints import FakeWorkers


@pytest.fixture(scope="session")
def fake_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWorkers]:
    """One process serving the breaker endpoint on as many loopback addresses as asked."""
    workers = FakeWorkers(Path(tmp_path_factory.mktemp("fake-workers"))).start()
    try:
        yield workers
    finally:
        workers.stop()
