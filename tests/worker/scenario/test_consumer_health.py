"""Readiness and liveness of a real worker whose consumer is really stalled: a busy pool, a
blocked event loop, a frozen broker, on SQS, Redis and RabbitMQ."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

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
    "sqs": {"consumer_stalled"},  # the ReceiveMessage long-poll is never answered
    "redis": {"consumer_stalled"},  # nor the BRPOP, nor an ack or a publish that waits on it
    "rabbitmq": {"broker_disconnected"},  # the heartbeats go missing
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
        expected = {(503, reason) for reason in FROZEN_BROKER_READS_AS[broker_kind]}
        eventually(lambda: readyz(worker) in expected, timeout=STALL + 20)
        seconds = time.monotonic() - frozen
        print(f"{broker_kind}: broker frozen -> /readyz {readyz(worker)} in {seconds:.1f} s")
    eventually(lambda: readyz(worker) == (200, "ready"), timeout=60, what="ready again")
    [after] = lab.send(1, work_s=0.1)
    lab.log.wait_for_successes({after}, timeout=60)
    assert consumer(worker)["status"] == "consuming"


Reading = tuple[float, tuple[int, str], int, str]
"""Seconds since the watch began, ``/readyz``, ``/healthz``'s status, the consumer's status."""


def readings(worker: Any, seconds: float) -> list[Reading]:
    """Every reading of the worker's health for ``seconds``; the test decides what it should
    have been (watching is the point: a false status comes and goes)."""
    seen = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        seen.append(
            (
                round(elapsed, 1),
                readyz(worker),
                get(worker, "/healthz")[0],
                consumer(worker)["status"],
            )
        )
        time.sleep(0.2)
    return seen


def not_taking_work(seen: list[Reading]) -> list[Reading]:
    """The readings but those of a worker that takes work and is live."""
    return [s for s in seen if s[1:] != ((200, "ready"), 200, "consuming")]


def test_a_brpop_left_unread_on_purpose_is_not_a_stall(make_lab: Callable[..., Lab]) -> None:
    """kombu leaves the answer to a BRPOP unread while the channel has no credit: a circuit
    opened under it, or an ETA task that lowered the prefetch count back as it began."""
    lab = make_lab("redis")
    conf = {**CONF, "circuitgate_fail_max": 1, "circuitgate_reset_timeout": 60}
    worker = lab.worker("w", conf=conf, broken=True)
    lab.send(1, work_s=0.1)
    eventually(lambda: readyz(worker) == (503, "circuit open"), timeout=30, what="the trip")
    seen = readings(worker, 3 * STALL)
    worker.wait_for_polls(3)
    wrong = [s for s in seen if (s[1], s[3]) != ((503, "circuit open"), "paused")]
    assert not wrong, f"{len(wrong)}/{len(seen)} wrong, first {wrong[0]}; {consumer(worker)}"

    healthy = lab.worker("h", conf=CONF)
    lab.producer.send_task("lab.infer", args=(0,), kwargs={"work_s": 4 * STALL}, countdown=2)
    eventually(lambda: consumer(healthy)["active_tasks"] == 1, timeout=30, what="the ETA task")
    seen = readings(healthy, 2 * STALL)
    wrong = [s for s in seen if (s[1], s[3]) != ((200, "ready"), "consuming")]
    assert not wrong, f"{len(wrong)}/{len(seen)} wrong, first {wrong[0]}; {consumer(healthy)}"


def test_a_long_task_in_the_solo_pool_is_a_busy_worker_not_a_stuck_one(
    make_lab: Callable[..., Lab],
) -> None:
    """The solo pool runs a task inside the consumer's loop, which ticks no more meanwhile
    (nor reads the BRPOP it left out: the stamps are the same for every transport's poll)."""
    lab = make_lab("redis")
    worker = lab.worker("w", conf=CONF, pool="solo")
    [task] = lab.send(1, work_s=LIVENESS + 3)
    eventually(lambda: worker.events.of("started"), timeout=30, what="the task starts")
    wrong = not_taking_work(readings(worker, LIVENESS + 2 * TICK_SECONDS))
    assert not wrong, f"{len(wrong)} wrong, first {wrong[0]}, last {wrong[-1]}"
    lab.log.wait_for_successes({task}, timeout=30)
    # Once the task is over, the loop and its polls count again from then.
    assert not not_taking_work(readings(worker, 2 * TICK_SECONDS))
    worker.wait_for_polls(3)
    assert consumer(worker)["status"] == "consuming"


def test_an_sqs_long_poll_longer_than_the_stall_bound_is_not_a_stall(
    make_lab: Callable[..., Lab],
) -> None:
    """A ReceiveMessage waits up to ``wait_time_seconds`` for a message, on purpose."""
    lab = make_lab("sqs")
    options = {**lab.broker.transport_options, "wait_time_seconds": 2 * STALL}
    worker = lab.worker("w", conf={**CONF, "broker_transport_options": options})
    worker.wait_for_polls(1)
    wrong = not_taking_work(readings(worker, 3 * STALL))
    assert not wrong, f"{len(wrong)} wrong, first {wrong[0]}; {consumer(worker)}"


@pytest.mark.parametrize(("kind", "ending"), [("redis", 0), ("redis", 3), ("sqs", 0), ("sqs", 3)])
def test_a_frozen_broker_is_never_a_liveness_failure_nor_a_second_run(
    make_lab: Callable[..., Lab], kind: str, ending: int
) -> None:
    """A restart would not bring the broker back: the worker is not ready, but live, idle or
    with ``ending`` tasks whose acks wait on the frozen broker, each in the loop's thread on
    Redis; once the broker is back each task has run once."""
    lab = make_lab(kind)
    worker = lab.worker("w", conf=CONF, concurrency=max(ending, 1))
    worker.wait_for_polls(3)
    tasks = lab.send(ending, work_s=2)
    if tasks:
        eventually(lambda: consumer(worker)["active_tasks"] == ending, timeout=30)
    not_ready = {(503, reason) for reason in FROZEN_BROKER_READS_AS[kind]}
    with lab.broker.paused():
        start = time.monotonic()
        seen = []
        while (elapsed := time.monotonic() - start) < 2 * LIVENESS:
            seen.append((round(elapsed, 1), get(worker, "/healthz")[0], readyz(worker)))
            time.sleep(0.3)
    eventually(lambda: readyz(worker) == (200, "ready"), timeout=60, what="ready again")
    not_live = [s for s in seen if s[1] != 200]
    assert not not_live, f"{len(not_live)}/{len(seen)} not live, first {not_live[0]}"
    assert seen[-1][2] in not_ready, seen[-1]
    [after] = lab.send(1, work_s=0.1)
    lab.log.wait_for_successes({after, *tasks}, timeout=60)
    worker.stop()  # kombu gives back what it holds unacked: an ack that failed would show
    lab.worker("other")
    [last] = lab.send(1, work_s=0.1)
    successes = lab.log.wait_for_successes({last}, timeout=60)
    assert {t: successes[t] for t in [*tasks, after]} == dict.fromkeys([*tasks, after], 1)


def test_a_warm_shutdown_reads_as_stopping_and_live_until_the_tasks_are_done(
    make_lab: Callable[..., Lab],
) -> None:
    """The endpoint's lifetime is the worker's, the same on every broker."""
    lab = make_lab("sqs")
    worker = lab.worker("w", conf=CONF)
    [task] = lab.send(1, work_s=STALL + 3)
    eventually(lambda: consumer(worker)["active_tasks"] == 1, timeout=30, what="the task runs")
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    eventually(lambda: readyz(worker) == (503, "consumer_stopping"), timeout=10)
    seen = []
    while not lab.log.successes_per_task():  # the task runs still: the endpoint answers
        seen.append((get(worker, "/healthz")[0], readyz(worker)))
        time.sleep(0.2)
    assert seen and set(seen) == {(200, (503, "consumer_stopping"))}, seen
    assert lab.log.successes_per_task() == {task: 1}
    worker.process.wait(timeout=30)


def test_a_redis_that_answers_ping_but_holds_writes_is_the_brokers_fault(
    make_lab: Callable[..., Lab],
) -> None:
    """``CLIENT PAUSE WRITE`` (what FAILOVER does on the primary) holds the loop in its acks
    while PING is answered: the broker check writes too, and the worker stays live."""
    lab = make_lab("redis")
    worker = lab.worker("w", conf=CONF, concurrency=2)
    tasks = lab.send(2, work_s=2)
    eventually(lambda: consumer(worker)["active_tasks"] == 2, timeout=30)
    admin = redis.Redis.from_url(lab.broker.url)
    admin.execute_command("CLIENT", "PAUSE", int((2 * LIVENESS + 3) * 1000), "WRITE")
    try:
        seen = readings(worker, 2 * LIVENESS)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert set(lab.log.wait_for_successes(set(tasks), timeout=60).values()) == {1}
    not_live = [s for s in seen if s[2] != 200]
    assert not not_live, f"{len(not_live)}/{len(seen)} not live, first {not_live[0]}"


def test_a_stuck_loop_is_the_workers_fault_though_the_broker_refuses_new_clients(
    make_lab: Callable[..., Lab],
) -> None:
    """At ``maxclients`` (or with a password rotated for new clients) the broker answers the
    check with an error at once: a live broker, so a blocked loop reads not live, and stays
    so when the broker freezes after that."""
    lab = make_lab("redis")
    worker = lab.worker("w", conf=CONF)
    worker.wait_for_polls(3)
    admin = redis.Redis.from_url(lab.broker.url)
    admin.config_set("maxclients", len(admin.client_list()))
    try:
        with worker.event_loop_blocked():
            eventually(lambda: get(worker, "/healthz")[0] == 503, timeout=LIVENESS + 10)
            admin.config_set("maxclients", 10000)
            with lab.broker.paused():
                seen = [s[2] for s in readings(worker, 3 * TICK_SECONDS + 2)]
    finally:
        admin.config_set("maxclients", 10000)
    assert set(seen) == {503}, seen
    eventually(lambda: get(worker, "/healthz")[0] == 200, timeout=30, what="live again")
