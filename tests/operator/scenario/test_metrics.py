"""The operator's own health and metrics, and running it with plain ``kopf run``."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from circuitgate_devkit.cluster.accounts import OperatorIdentity
from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.cluster.service_accounts import refusals
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import eventually

pytestmark = pytest.mark.cluster


def test_liveness_and_metrics_follow_what_happens(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz") as answer:
        assert answer.status == 200
    node = cluster.node("n1")
    hosts = [cluster.worker_pod(f"w{i}", node=node) for i in range(3)]
    cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
    eventually(lambda: operator.metrics().get("circuitgate_operator_watched_pods") == 3)
    eventually(lambda: all(cluster.condition_status(f"w{i}") == "True" for i in range(3)))
    cluster.workers.trip(hosts[0], trips=1)
    cluster.workers.trip(hosts[1], trips=1)
    eventually(lambda: operator.metrics().get('circuitgate_operator_circuits{state="open"}') == 2)
    key = 'circuitgate_operator_actions_suppressed_total{action="mark_unready",cause="cap"}'
    eventually(lambda: operator.metrics().get(key, 0) >= 1)  # the plan applied, capped
    samples = operator.metrics()
    assert samples['circuitgate_operator_circuits{state="closed"}'] == 1
    assert samples['circuitgate_operator_actions_total{action="mark_unready"}'] == 1
    assert samples['circuitgate_operator_actions_total{action="mark_ready"}'] == 3  # first Trues
    assert (
        samples['circuitgate_operator_actions_suppressed_total{action="mark_unready",cause="cap"}']
        >= 1
    )
    assert samples["circuitgate_operator_trip_to_condition_seconds_count"] == 1
    assert samples["circuitgate_operator_trip_to_condition_seconds_sum"] < 5
    assert samples["circuitgate_operator_reconcile_seconds_count"] >= 2  # the first, the trip's
    assert samples['circuitgate_operator_api_writes_total{verb="PATCH"}'] >= 4
    cluster.workers.set(hosts[2], listening=False)
    eventually(
        lambda: (
            operator.metrics().get('circuitgate_operator_endpoint_errors_total{kind="refused"}', 0)
            >= 1
        )
    )


def test_kopf_run_serves_the_same_handlers(
    operator_identity: OperatorIdentity, cluster: Cluster, tmp_path: Path
) -> None:
    node = cluster.node("n1")
    cluster.worker_pod("w0", node=node)
    cluster.policy()
    log = tmp_path / "kopf-run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "-n", cluster.namespace,
             "-m", "circuitgate_operator.handlers"],
            env={"KUBECONFIG": str(operator_identity.kubeconfig), "PATH": "/usr/bin:/bin",
                 "CIRCUITGATE_METRICS": f"127.0.0.1:{free_port()}"},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        eventually(lambda: cluster.condition_status("w0") == "True", timeout=30, what=log.read_text)
        eventually(lambda: cluster.state_of("w0").get("state") == "closed")
    finally:
        process.terminate()
        process.wait(20)
    assert not refusals(log.read_text()), log.read_text()
