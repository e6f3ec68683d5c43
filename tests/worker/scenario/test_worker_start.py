"""A worker with an invalid setting refuses to start and says which setting and why."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import Lab

pytestmark = pytest.mark.integration


def test_an_invalid_setting_stops_the_worker_at_start(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab("redis")
    worker = lab.worker("misconfigured", start=False, conf={"circuitgate_jitter": 2})
    worker.start(wait=False)
    assert worker.process is not None
    assert worker.process.wait(60) != 0
    output = worker.output()
    assert "circuitgate_jitter=2 is invalid" in output
    assert "a finite number >= 0 and <= 0.99" in output
