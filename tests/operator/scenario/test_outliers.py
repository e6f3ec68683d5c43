"""End to end: outlier detection on real ``celery worker`` processes (Redis). Of six workers
on one queue, one fails 30 % of its tasks at random and one is three times slower; neither
ever trips its own breaker. The operator compares each with its peers from the evidence
their endpoints serve and marks exactly those two unready (reason ``Outlier``) once their
deviation has lasted the sustain period; no healthy worker is ever marked."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.lab.app import FLAKY, SLOW
from circuitgate_devkit.ports import next_loopback
from circuitgate_devkit.waiting import eventually
from tests.worker.scenario.conftest import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

# No breaker trips here (a flaky device rarely fails 50 in a row); evidence moves every second.
CONF = {"circuitgate_fail_max": 50, "circuitgate_evidence_seconds": 1}
HEALTHY = ("ok0", "ok1", "ok2", "ok3")
SUSTAIN = 5.0


def test_a_flaky_and_a_slow_worker_are_outliers_and_no_healthy_worker_ever_is(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    make_lab: Callable[..., Lab],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lab = make_lab("redis")
    workers = {
        name: lab.worker(name, conf=CONF, start=False, endpoint_host=next_loopback())
        for name in (*HEALTHY, "flaky", "slow")
    }
    workers["flaky"].break_device(FLAKY)
    workers["slow"].break_device(SLOW)
    for worker in workers.values():
        worker.start()
    node = cluster.node("gpu")
    for name, worker in workers.items():
        cluster.worker_pod(name, node=node, endpoint=(worker.endpoint_host, worker.endpoint_port))
    cluster.policy(
        safety={"maxUnreadyPods": 2, "stormThreshold": "100%"},
        outlierDetection={
            "enabled": True,
            "minCalls": 20,
            "sustainSeconds": SUSTAIN,
            "duration": {"factor": 2, "minimumSeconds": 0.05},
        },
    )
    operator = start_operator()
    for name in workers:
        eventually(lambda name=name: cluster.condition_status(name) == "True", timeout=30)

    sent = time.time()
    ids = set(lab.send(600, work_s=0.05))
    detected: dict[str, float] = {}
    for name, measure in (("flaky", "failureRate"), ("slow", "p50Seconds")):
        condition = eventually(
            lambda name=name: (c := cluster.condition(name)) and c["status"] == "False" and c,
            timeout=120,
            what=f"the {name} worker's pod turns unready",
        )
        detected[name] = time.time() - sent
        assert condition["reason"] == "Outlier"
        outlier = cluster.state_of(name)["outlier"]
        assert (outlier["verdict"], outlier["measure"], outlier["enforced"]) == (
            "outlier",
            measure,
            True,
        )
        assert outlier["value"] > 2 * outlier["peersMedian"]
        assert cluster.state_of(name)["state"] == "closed"  # its own breaker never tripped
        (event,) = eventually(lambda name=name: cluster.events("OutlierDetected", name=name))
        assert "peers' median" in event["message"]

    # Every task ran once it succeeded somewhere; by then every worker's evidence is in.
    successes = lab.log.wait_for_successes(ids, timeout=180)
    assert ids <= successes.keys()
    time_of_last = max(e.end for e in lab.log.read())
    # Each worker's document moves within a second of its last call, and the operator
    # reconciles after it: two more passes after that have seen everything there is.
    eventually(lambda: time.time() > time_of_last + 2 * CONF["circuitgate_evidence_seconds"])
    operator.settle(f"{cluster.namespace}/workers")
    marked = {e["involvedObject"]["name"] for e in cluster.events("PodMarkedUnready")}
    flagged = {e["involvedObject"]["name"] for e in cluster.events("OutlierDetected")}
    assert marked == flagged == {"flaky", "slow"}
    assert all(cluster.condition_status(name) == "True" for name in HEALTHY)
    deviating = [name for name in HEALTHY if "outlier" in cluster.state_of(name)]
    assert deviating == []
    policy_status = cluster.policy_status()
    assert policy_status["outliers"] == 2
    with capsys.disabled():
        print(
            f"\noutlier detection: flaky marked after {detected['flaky']:.1f} s, slow after "
            f"{detected['slow']:.1f} s (sustain {SUSTAIN:g} s); healthy marked: 0 of "
            f"{len(HEALTHY)}"
        )
