"""End to end: a real ``celery worker`` on SQS (moto's real HTTP endpoint) whose device breaks
trips its breaker; the operator reads the worker's own endpoint (circuitgate.endpoint) at
the pod's IP, turns the pod's condition False and records the Events."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery

from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.lab.brokers import sqs_broker
from circuitgate_devkit.lab.workers import LabWorker
from circuitgate_devkit.ports import next_loopback
from circuitgate_devkit.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

CONF = {"circuitgate_fail_max": 3, "circuitgate_reset_timeout": 30, "circuitgate_jitter": 0.0}


def test_a_real_worker_trips_and_its_pod_turns_unready(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], tmp_path: Path
) -> None:
    with sqs_broker(visibility_timeout=300) as broker:
        exposed = {**CONF, "circuitgate_expose_failure_messages": True}
        bad = LabWorker("bad", broker, tmp_path, conf=exposed, endpoint_host=next_loopback())
        good = LabWorker("good", broker, tmp_path, conf=CONF, endpoint_host=next_loopback())
        producer = Celery("producer", set_as_current=False)
        producer.conf.update(broker.celery_config())
        try:
            bad.break_device()
            bad.start()
            good.start()
            node = cluster.node("gpu")
            for worker in (bad, good):  # pods standing for the workers: their IPs and ports
                address = (worker.endpoint_host, worker.endpoint_port)
                cluster.worker_pod(worker.name, node=node, ready=False, endpoint=address)
            cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
            start_operator()
            eventually(lambda: cluster.condition_status("bad") == "True", timeout=20)
            for name in ("bad", "good"):
                eventually(lambda name=name: cluster.state_of(name).get("state") == "closed")
            assert cluster.state_of("bad")["endpoint"]["reachable"] is True

            for n in range(20):
                producer.send_task("lab.infer", args=(n,), kwargs={"work_s": 0.2})
            condition = eventually(
                lambda: (c := cluster.condition("bad")) and c["status"] == "False" and c,
                timeout=60,
                what="the broken worker's pod turns unready",
            )
            assert condition["reason"] == "CircuitOpen"
            status = cluster.state_of("bad")
            assert status["state"] == "open" and status["trips"] >= 1
            assert status["consumptionPaused"] is True
            # The cause, without reading the worker's logs: in the state and in the Event.
            cause = {"type": "DeviceFault", "message": "CUDA error: device unavailable"}
            # (Three tripped it; a fourth, started before the trip, may be among them.)
            assert status["lastFailures"][-3:] == [cause] * 3
            (opened,) = eventually(lambda: cluster.events("CircuitOpened", name="bad"))
            assert re.match(
                r"breaker default opened after [34] x DeviceFault: CUDA error: device unavailable",
                opened["message"],
            )
            assert eventually(lambda: cluster.events("PodMarkedUnready", name="bad"))
            assert cluster.condition_status("good") == "True"
            assert cluster.state_of("good")["state"] == "closed"
        finally:
            producer.close()
            bad.stop(timeout=20)
            good.stop(timeout=20)


def test_a_stalled_worker_shows_in_its_circuit_state_and_events(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], tmp_path: Path
) -> None:
    with sqs_broker() as broker:
        conf = {**CONF, "circuitgate_stall_seconds": 2, "circuitgate_liveness_seconds": 600}
        worker = LabWorker("w", broker, tmp_path, conf=conf, endpoint_host=next_loopback())
        try:
            worker.start()
            address = (worker.endpoint_host, worker.endpoint_port)
            cluster.worker_pod(worker.name, node=cluster.node("gpu"), endpoint=address)
            cluster.policy()
            start_operator()
            eventually(lambda: cluster.state_of("w").get("consumer") == "consuming", timeout=20)
            with worker.event_loop_blocked():
                eventually(lambda: cluster.state_of("w").get("consumer") == "stalled", timeout=20)
                (stalled,) = eventually(lambda: cluster.events("ConsumerStalled", name="w"))
                assert stalled["type"] == "Warning"
            eventually(lambda: cluster.state_of("w").get("consumer") == "consuming", timeout=20)
            assert eventually(lambda: cluster.events("ConsumerResumed", name="w"))
            assert cluster.state_of("w")["state"] == "closed"  # a stall is not a trip
        finally:
            worker.stop(timeout=20)
