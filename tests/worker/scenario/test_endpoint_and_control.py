"""The endpoint and the control commands of a real worker."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from circuitgate_devkit.lab.workers import LabWorker
from circuitgate_devkit.waiting import eventually

from .conftest import Lab

pytestmark = pytest.mark.integration


def get(worker: LabWorker, path: str, timeout: float = 30) -> tuple[int, bytes]:
    url = urlsplit(worker.endpoint)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def document(worker: LabWorker) -> dict[str, Any]:
    status, body = get(worker, "/circuit")
    assert status == 200
    data: dict[str, Any] = json.loads(body)
    return data


def celery(lab: Lab, *args: str) -> str:
    env = {**os.environ, "CIRCUITGATE_LAB_BROKER": json.dumps(lab.broker.celery_config())}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "circuitgate_devkit.lab.app", *args],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


def test_200_long_pollers_learn_of_the_trip_while_the_worker_runs_tasks(
    make_lab: Callable[..., Lab], broker_kind: str
) -> None:
    lab = make_lab(broker_kind)
    conf = {"circuitgate_fail_max": 3, "circuitgate_reset_timeout": 60}
    worker = lab.worker("w", concurrency=2, conf=conf)
    lab.send(10, work_s=0.2)
    since = document(worker)["sequence"]
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        polls = [pool.submit(get, worker, f"/circuit?since={since}&wait=60") for _ in range(200)]
        time.sleep(1)  # all 200 are waiting, while the worker runs its tasks
        assert get(worker, "/healthz", timeout=5)[0] == 200
        worker.break_device()
        lab.send(5, work_s=0.2)
        answers = [json.loads(f.result(timeout=60)[1]) for f in polls]
    assert all(a["sequence"] > since for a in answers)
    eventually(
        lambda: document(worker)["breakers"][0]["state"] == "open", timeout=30, what="the trip"
    )
    assert get(worker, "/readyz")[0] == 503
    assert get(worker, "/healthz")[0] == 200


def test_control_commands_force_the_circuit_and_the_gate_obeys(
    make_lab: Callable[..., Lab],
) -> None:
    # Celery's remote control needs a broadcast exchange: Redis and RabbitMQ have one, SQS not.
    lab = make_lab("redis")
    worker = lab.worker("w", concurrency=2, conf={"circuitgate_fail_max": 2})
    dest = ("--destination", worker.hostname)

    assert "forced_open" in celery(lab, "control", "circuit_open", *dest)
    assert document(worker)["breakers"][0]["state"] == "forced_open"
    assert get(worker, "/readyz")[0] == 503
    ids = lab.send(4, work_s=0.1)
    worker.wait_for_polls(5)  # five chances to fetch the tasks already queued
    assert lab.log.read() == [], "a task ran while the circuit was forced open"
    assert worker.events.of("received") == [], "a task got past the gate while forced open"
    inspected = json.loads(celery(lab, "inspect", "circuit", "--json", *dest))
    assert inspected[worker.hostname]["breakers"][0]["consumption_paused"] is True

    assert "closed" in celery(lab, "control", "circuit_reset", *dest)
    successes = lab.log.wait_for_successes(set(ids), timeout=30)
    assert {i: successes[i] for i in ids} == dict.fromkeys(ids, 1)

    assert "forced_closed" in celery(lab, "control", "circuit_close", *dest)
    worker.break_device()
    failing = lab.send(4, work_s=0.1)
    eventually(
        lambda: len([e for e in lab.log.read() if e.id in failing]) >= 4,
        timeout=30,
        what="the failures",
    )
    assert document(worker)["breakers"][0]["state"] == "forced_closed"


def test_the_document_carries_the_workers_task_times_and_wakes_watchers_for_them(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab("redis")  # the evidence is the same on every broker
    conf = {
        "circuitgate_fail_max": 100,  # failures that never trip, so every task runs here
        "circuitgate_handback": False,
        "circuitgate_evidence_seconds": 0.5,
    }
    worker = lab.worker("w", concurrency=2, conf=conf)
    lab.log.wait_for_successes(set(lab.send(3, work_s=0.3)), timeout=60)
    before = document(worker)
    assert before["breakers"][0]["recent_calls"]["calls"] == 3
    lab.log.wait_for_successes(set(lab.send(3, work_s=0.3)), timeout=60)
    # Successes change no state: only the evidence moves the sequence, and wakes a long-poll.
    status, body = get(worker, f"/circuit?since={before['sequence']}&wait=30")
    assert status == 200
    woken = json.loads(body)
    assert woken["sequence"] > before["sequence"]
    assert woken["breakers"][0]["state"] == "closed"
    assert woken["breakers"][0]["recent_calls"]["calls"] == 6
    worker.break_device()
    lab.send(4, work_s=0.3)
    eventually(
        lambda: document(worker)["breakers"][0]["recent_calls"]["calls"] == 10,
        timeout=60,
        what="the failures noted",
    )
    calls = document(worker)["breakers"][0]["recent_calls"]
    assert calls["failures"] == 4
    # The successes' times (each slept 0.3 s), not the failures' (0.02 s).
    assert 0.3 <= calls["p50_seconds"] <= calls["p90_seconds"] < 1.5


def test_a_pool_restart_keeps_the_gate_in_front_of_the_pool(
    make_lab: Callable[..., Lab],
) -> None:
    # RabbitMQ pushes the next message as soon as a failed one is acknowledged: with the gate
    # in front of the pool it goes back unexecuted without ever reaching Celery's strategy.
    lab = make_lab("rabbitmq")
    conf = {
        "circuitgate_fail_max": 2,
        "circuitgate_reset_timeout": 60,
        "worker_pool_restarts": True,
    }
    worker = lab.worker("w", broken=True, conf=conf)
    replies = lab.producer.control.pool_restart(destination=[worker.hostname], reply=True)
    assert replies == [{worker.hostname: {"ok": "reload started"}}]
    lab.send(5, work_s=0.1)
    eventually(
        lambda: worker.metric("circuitgate_handed_back_messages_total", reason="open") >= 1,
        timeout=90,  # the restart forks a new pool: slow on a loaded machine
        what="a message arriving while open, handed back",
    )
    worker.wait_for_polls(5)
    received = {e.task_id for e in worker.events.of("received")}
    assert received == {e.id for e in lab.log.read()}, "a message reached the pool while open"
