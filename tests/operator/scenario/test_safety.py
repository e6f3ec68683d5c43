"""Safety on the real API server: caps that are never overshot, the shared-outage brake,
dry run, the pause annotation, and overlapping policies."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.waiting import eventually

pytestmark = pytest.mark.cluster


def unready(cluster: Cluster, pods: list[str]) -> set[str]:
    return {p for p in pods if cluster.condition_status(p) == "False"}


def ready_workers(cluster: Cluster, count: int, safety: dict[str, Any]) -> dict[str, str]:
    """``count`` worker pods (``w0``…) on one node, under a policy with these safety limits,
    once all are ready; their hosts, by pod."""
    node = cluster.node("n1")
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(count)}
    cluster.policy(safety=safety)
    eventually(lambda: all(cluster.condition_status(p) == "True" for p in hosts))
    return hosts


def test_a_storm_stops_at_the_cap_and_resumes_when_it_clears(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    hosts = ready_workers(cluster, 8, {"maxUnreadyPods": "25%", "stormThreshold": "100%"})  # 2 of 8
    pods = list(hosts)

    most = 0
    stop = threading.Event()

    def watch_the_cap() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(unready(cluster, pods)))

    watcher = threading.Thread(target=watch_the_cap)
    watcher.start()
    try:
        for i, pod in enumerate(pods[:5]):
            cluster.workers.trip(hosts[pod], trips=1)
            time.sleep(0.05 * i)
        held = eventually(lambda: (u := unready(cluster, pods)) and len(u) == 2 and u)
        assert held <= set(pods[:5])
        capped = eventually(
            lambda: (c := cluster.policy_condition("Capped")) and c["status"] == "True" and c
        )
        assert capped["reason"] == "SafetyCapReached"
        (event,) = eventually(lambda: cluster.events("SafetyCapReached"))
        assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "CircuitPolicy"
        operator.settle(f"{cluster.namespace}/workers")
        assert len(unready(cluster, pods)) == 2
        # One held pod recovers: its slot goes to a still-open one, never past the cap.
        first = sorted(held)[0]
        cluster.workers.close(hosts[first])
        eventually(lambda: cluster.condition_status(first) == "True")
        eventually(lambda: len(unready(cluster, pods)) == 2 and first not in unready(cluster, pods))
        for pod in pods[:5]:
            cluster.workers.close(hosts[pod])
        eventually(lambda: not unready(cluster, pods))
        eventually(lambda: (c := cluster.policy_condition("Capped")) and c["status"] == "False")
    finally:
        stop.set()
        watcher.join()
    assert most == 2
    suppressed = operator.metrics()
    assert (
        suppressed[
            'circuitgate_operator_actions_suppressed_total{action="mark_unready",cause="cap"}'
        ]
        >= 3
    )


def test_a_suspected_shared_outage_marks_nobody_unready(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    hosts = ready_workers(cluster, 4, {"maxUnreadyPods": "100%", "stormThreshold": "50%"})
    pods = list(hosts)
    # At once, e.g. the broker went away for everyone (one at a time, a loaded machine let
    # a pass see the first alone and mark it unready before the storm showed).
    cluster.workers.trip_all([hosts[pod] for pod in pods[:3]], trips=1)
    outage = eventually(
        lambda: (
            (c := cluster.policy_condition("SharedOutageSuspected")) and c["status"] == "True" and c
        )
    )
    assert outage["reason"] == "SuspectedSharedOutage"
    assert eventually(lambda: cluster.events("SuspectedSharedOutage"))
    eventually(lambda: all(cluster.state_of(p).get("state") == "open" for p in pods[:3]))
    operator.settle(f"{cluster.namespace}/workers")
    assert unready(cluster, pods) == set()
    # Two recover: one open circuit of four is below the threshold, so it is acted on now.
    cluster.workers.close(hosts["w0"])
    cluster.workers.close(hosts["w1"])
    eventually(lambda: unready(cluster, pods) == {"w2"})
    eventually(
        lambda: (c := cluster.policy_condition("SharedOutageSuspected")) and c["status"] == "False"
    )
    assert eventually(lambda: cluster.events("SharedOutageCleared"))


def test_dry_run_records_what_it_would_do_and_changes_nothing(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("n1", labels={"gpu": "true"})
    pods = [f"w{i}" for i in range(4)]
    hosts = {p: cluster.worker_pod(p, node=node) for p in pods}
    cluster.policy(
        dryRun=True,
        safety={"maxUnreadyPods": "100%", "stormThreshold": "100%"},
        nodeRemediation={"enabled": True, "tripThreshold": 2, "minDistinctPods": 2},
    )
    eventually(lambda: len(cluster.circuit_states()) == 4)
    # Gated pods still get their first True: a gate nobody sets keeps a pod unready.
    eventually(lambda: all(cluster.condition_status(p) == "True" for p in pods))
    cluster.workers.trip(hosts["w0"], trips=1)
    cluster.workers.trip(hosts["w1"], trips=1)
    would = eventually(lambda: cluster.events("PodMarkedUnready", name="w0"))
    assert would[0]["message"].startswith("dry run: would mark unready")
    cordon = eventually(lambda: cluster.node_events(node, "NodeCordoned"))
    assert cordon[0]["message"].startswith("dry run: would cordon")
    operator.settle(f"{cluster.namespace}/workers")
    assert unready(cluster, pods) == set()
    assert not cluster.node_object(node)["spec"].get("unschedulable")
    assert cluster.state_of("w0")["state"] == "open"  # observation goes on
    assert would[0]["count"] == 1


def test_the_pause_annotation_stops_new_actions_but_not_observation(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    hosts = ready_workers(cluster, 4, {"maxUnreadyPods": "100%", "stormThreshold": "100%"})
    cluster.patch_policy(
        "workers", {"metadata": {"annotations": {"circuitgate.io/paused": "true"}}}
    )
    eventually(lambda: (c := cluster.policy_condition("Paused")) and c["status"] == "True")
    cluster.workers.trip(hosts["w0"], trips=1)
    eventually(lambda: cluster.state_of("w0").get("state") == "open")
    assert eventually(lambda: cluster.events("CircuitOpened", name="w0"))
    operator.settle(f"{cluster.namespace}/workers")
    assert cluster.condition_status("w0") == "True"
    cluster.patch_policy("workers", {"metadata": {"annotations": {"circuitgate.io/paused": None}}})
    eventually(lambda: cluster.condition_status("w0") == "False")


def test_overlapping_policies_are_reported_not_guessed(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("n1")
    host = cluster.worker_pod("both", node=node, labels={"app": "worker", "queue": "gpu"})
    cluster.worker_pod("only", node=node, labels={"app": "worker"})
    cluster.policy("a")
    cluster.policy("b", selector={"matchLabels": {"queue": "gpu"}})
    warning = eventually(lambda: cluster.events("OverlappingPolicies", name="both"))
    assert "a, b" in warning[0]["message"]
    overlap = eventually(
        lambda: (c := cluster.policy_condition("Overlapping", "a")) and c["status"] == "True" and c
    )
    assert "both" in overlap["message"]
    # Watched by neither, but its gate is not left unset for ever.
    eventually(lambda: cluster.condition_status("both") == "True")
    cluster.workers.trip(host, trips=1)
    operator.settle(f"{cluster.namespace}/a", f"{cluster.namespace}/b")
    assert cluster.circuit_state("both") is None
    assert cluster.condition_status("both") == "True"


def test_a_pod_relabelled_while_paused_is_restored_once_resumed(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    hosts = ready_workers(cluster, 3, {"maxUnreadyPods": "100%", "stormThreshold": "100%"})
    cluster.workers.trip(hosts["w0"], trips=1)
    eventually(lambda: cluster.condition_status("w0") == "False")
    cluster.patch_policy(
        "workers", {"metadata": {"annotations": {"circuitgate.io/paused": "true"}}}
    )
    eventually(lambda: (c := cluster.policy_condition("Paused")) and c["status"] == "True")
    cluster.core.patch_namespaced_pod(
        "w0", cluster.namespace, {"metadata": {"labels": {"app": "web"}}}
    )
    operator.settle(f"{cluster.namespace}/workers")
    cluster.patch_policy("workers", {"metadata": {"annotations": {"circuitgate.io/paused": None}}})
    eventually(lambda: cluster.condition_status("w0") == "True", what="w0 given back")
    eventually(lambda: cluster.circuit_state("w0") is None)


def test_a_policy_name_longer_than_a_label_works_and_can_be_deleted(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    name = "workers-" + "x" * 70
    node = cluster.node("n1")
    hosts = {p: cluster.worker_pod(p, node=node) for p in ("w0", "w1")}
    cluster.policy(name, safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
    eventually(lambda: len(cluster.circuit_states()) == 2, what="CircuitStates created")
    cluster.workers.trip(hosts["w0"], trips=1)
    eventually(lambda: cluster.condition_status("w0") == "False")
    cluster.delete_policy(name)
    eventually(lambda: cluster.policy_object(name) is None, what="the finalizer let go")
    assert cluster.condition_status("w0") == "True"
    assert cluster.circuit_states() == []


def test_a_healthy_worker_costs_no_writes_however_often_its_document_changes(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """A closed breaker's failure counter moves with every task, and a hostile endpoint may
    send a new sequence at once, without end: neither is news for a user to read."""
    node = cluster.node("n1")
    host = cluster.worker_pod("w0", node=node)
    cluster.policy()
    key = f"{cluster.namespace}/workers"
    eventually(lambda: cluster.state_of("w0").get("state") == "closed")
    eventually(lambda: cluster.condition_status("w0") == "True")
    operator.settle(key)
    before = operator.writes()

    def answers() -> int:  # documents sent: stream events, or answered requests
        shown = cluster.workers.show(host)
        return int(shown["events"] + shown["total_requests"])

    for failures in (1, 2, 0, 3, 1, 0, 2, 4):
        served = answers()
        cluster.workers.set(host, breaker={"consecutive_failures": failures})
        eventually(lambda served=served: answers() > served)
    served = answers()
    cluster.workers.set(host, mode="instant_change")
    eventually(lambda: answers() >= served + 20)
    operator.settle(key)

    assert operator.writes() == before
    assert cluster.state_of("w0")["state"] == "closed"
