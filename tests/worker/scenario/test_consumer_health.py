"""Readiness and liveness of a real worker whose consumer is really stalled: a busy pool, a
blocked event loop, a frozen broker, on SQS, Redis and RabbitMQ."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from circuitgate.consumer_watch import TICK_SECONDS
from circuitgate_devkit.waiting import eventually

from .conftest import Lab
from .test_endpoint_and_control import document, get

pytestmark = pytest.mark.integration

STALL = 3.0
LIVENESS = 6.0
CONF = {
    "circuitgate_stall_seconds": STALL,
    "circuitgate_liveness_seconds": LIVENESS,
    "broker_heartbeat": 2,  # RabbitMQ: a frozen broker ends the connection within seconds
}
FROZEN_BROKER_READS_AS = {
    "sqs": "consumer_stalled",  # the ReceiveMessage long-poll is never answered
    "redis": "consumer_stalled",  # nor the BRPOP
    "rabbitmq": "broker_disconnected",  # the heartbeats go missing
}


def consumer(worker: Any) -> dict[str, Any]:
    status: dict[str, Any] = document(worker)["consumer"]
    return status


def readyz(worker: Any) -> tuple[int, str]:
    status, body = get(worker, "/readyz")
    return status, body.decode().strip()


def test_busy_blocked_and_cut_off_consumers_read_as_they_are(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    worker = lab.worker("w", conf=CONF)
    assert readyz(worker) == (200, "ready")
    assert consumer(worker)["status"] == "consuming"

    # Every pool process busy past the stall bound: the loop ticks, nothing is stalled.
    [task] = lab.send(1, work_s=STALL + 2)
    eventually(
        lambda: (consumer(worker)["oldest_task_seconds"] or 0) > STALL,
        timeout=30,
        what="the task running longer than the stall bound",
    )
    busy = consumer(worker)
    assert (busy["status"], busy["active_tasks"]) == ("consuming", 1), busy
    assert busy["tick_age_seconds"] < STALL, busy
    assert readyz(worker) == (200, "ready")
    assert get(worker, "/healthz")[0] == 200
    lab.log.wait_for_successes({task}, timeout=30)

    # The event loop blocked: not ready past the stall bound, not live past the liveness one.
    with worker.event_loop_blocked():
        frozen = time.monotonic()
        eventually(lambda: readyz(worker) == (503, "consumer_stalled"), timeout=STALL + 10)
        not_ready_after = time.monotonic() - frozen
        eventually(lambda: get(worker, "/healthz")[0] == 503, timeout=LIVENESS + 10)
        not_live_after = time.monotonic() - frozen
    print(
        f"{broker_kind}: loop blocked -> /readyz 503 in {not_ready_after:.1f} s "
        f"(stall {STALL:g} s), /healthz 503 in {not_live_after:.1f} s (liveness {LIVENESS:g} s)"
    )
    # The last tick came up to a tick before the block.
    assert STALL - TICK_SECONDS <= not_ready_after < LIVENESS - TICK_SECONDS <= not_live_after
    eventually(lambda: readyz(worker) == (200, "ready"), timeout=30, what="ready again")
    assert get(worker, "/healthz")[0] == 200

    # The broker frozen: not ready (stalled or disconnected, as the transport shows it).
    with lab.broker.paused():
        frozen = time.monotonic()
        expected = (503, FROZEN_BROKER_READS_AS[broker_kind])
        eventually(lambda: readyz(worker) == expected, timeout=STALL + 20)
        seconds = time.monotonic() - frozen
        print(f"{broker_kind}: broker frozen -> /readyz {expected} in {seconds:.1f} s")
    eventually(lambda: readyz(worker) == (200, "ready"), timeout=60, what="ready again")
    [after] = lab.send(1, work_s=0.1)
    lab.log.wait_for_successes({after}, timeout=60)
    assert consumer(worker)["status"] == "consuming"
