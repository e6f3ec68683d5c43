"""The operator on a real API server with real worker endpoints: CircuitStates, readiness
conditions and Events follow the breakers, and a steady cluster costs no writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kubernetes import watch

from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.waiting import eventually

pytestmark = pytest.mark.cluster


def test_a_trip_turns_the_condition_false_and_a_close_back_true(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("n1")
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(4)}
    cluster.policy(safety={"maxUnreadyPods": 2})

    # Gated pods get True at once, and each its CircuitState, owned by the pod.
    for pod in hosts:
        eventually(lambda pod=pod: cluster.condition_status(pod) == "True", what=pod)
    eventually(lambda: cluster.state_of("w0").get("state") == "closed")
    state = cluster.circuit_state("w0")
    assert state is not None
    assert state["status"]["node"] == node and state["status"]["policy"] == "workers"
    assert state["status"]["endpoint"] == {
        "url": cluster.workers.url(hosts["w0"]),
        "reachable": True,
    }
    (owner,) = state["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Pod",
        "w0",
        cluster.pod("w0")["metadata"]["uid"],
    )

    opened = cluster.workers.trip(hosts["w0"], trips=1)
    condition = eventually(lambda: (c := cluster.condition("w0")) and c["status"] == "False" and c)
    took = time.time() - opened
    assert condition["reason"] == "CircuitOpen"
    assert condition["message"].startswith("breaker default is open until ")
    state = cluster.circuit_state("w0")
    assert state is not None
    assert (state["status"]["state"], state["status"]["trips"], state["status"]["failures"]) == (
        "open",
        1,
        5,
    )
    assert {c for c in ("w1", "w2", "w3") if cluster.condition_status(c) == "True"} == {
        "w1",
        "w2",
        "w3",
    }
    status = eventually(lambda: (s := cluster.policy_status()).get("unreadyPods") == 1 and s)
    assert (status["matchedPods"], status["openCircuits"], status["observedGeneration"]) == (
        4,
        1,
        1,
    )
    opened_events = eventually(lambda: cluster.events("CircuitOpened", name="w0"))
    assert opened_events[0]["type"] == "Warning"
    assert opened_events[0]["involvedObject"]["kind"] == "Pod"
    assert eventually(lambda: cluster.events("PodMarkedUnready", name="w0"))

    cluster.workers.close(hosts["w0"])
    condition = eventually(lambda: (c := cluster.condition("w0")) and c["status"] == "True" and c)
    assert condition["reason"] == "CircuitClosed"
    assert eventually(lambda: cluster.events("CircuitClosed", name="w0"))
    assert eventually(lambda: cluster.events("PodMarkedReady", name="w0"))
    assert eventually(lambda: cluster.policy_status().get("unreadyPods") == 0)
    print(f"trip to condition False: {took:.2f}s (includes the test's polling)")
    assert took < 5


def test_a_steady_cluster_makes_no_writes(cluster: Cluster, operator: OperatorProcess) -> None:
    node = cluster.node("n1")
    for i in range(3):
        cluster.worker_pod(f"w{i}", node=node)
    # Long-polls answer every second here: many reads, and still no write.
    cluster.policy(watch={"longPollSeconds": 1, "timeoutSeconds": 1, "pollIntervalSeconds": 1})
    eventually(lambda: cluster.policy_status().get("matchedPods") == 3)
    eventually(lambda: all(cluster.condition_status(f"w{i}") == "True" for i in range(3)))
    policy = f"{cluster.namespace}/workers"
    operator.settle(policy)
    before = operator.writes()
    versions = {f"w{i}": cluster.pod(f"w{i}")["metadata"]["resourceVersion"] for i in range(3)}
    # Several long-poll rounds (one a second here) and two full resyncs (every 2 s in tests).
    operator.settle(policy)
    assert operator.writes() == before
    assert {p: cluster.pod(p)["metadata"]["resourceVersion"] for p in versions} == versions
    reads = operator.metrics()
    assert reads["circuitgate_operator_watched_pods"] == 3
    assert reads['circuitgate_operator_circuits{state="closed"}'] == 3


def test_endpoints_that_answer_one_at_a_time_are_each_written_once(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """A start where the endpoints open one at a time, the last after three times its timeout
    (a loaded node; ten thousand pods read at once): each CircuitState is written once, as
    closed, never first as unknown for a stream still waiting for its turn."""
    node = cluster.node("n1")
    hosts = [cluster.worker_pod(f"w{i}", node=node) for i in range(12)]
    cluster.workers.bulk(hosts, mode="queued")  # 0.25 s each, one after the other
    cluster.policy(watch={"timeoutSeconds": 1})
    seen: list[tuple[str, str | None]] = []
    follow = watch.Watch()

    def record() -> None:
        for event in follow.stream(
            cluster.custom.list_namespaced_custom_object,
            "circuitgate.io",
            "v1alpha1",
            cluster.namespace,
            "circuitstates",
        ):
            state = event["object"]
            seen.append((state["metadata"]["name"], (state.get("status") or {}).get("state")))

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    operator = start_operator(env={"CIRCUITGATE_STREAM_OPENINGS": "1"})
    eventually(
        lambda: all(cluster.condition_status(f"w{i}") == "True" for i in range(12)), timeout=30
    )
    operator.settle(f"{cluster.namespace}/workers")
    follow.stop()
    # Created without a status (a subresource), then the status: closed.
    assert sorted(seen, key=str) == sorted(
        [(f"w{i}", None) for i in range(12)] + [(f"w{i}", "closed") for i in range(12)], key=str
    )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("malformed", "malformed document"), ("oversized", "oversized event"),
     ("slow", "no answer within 1s"), ("refused", "connection refused")],
)  # fmt: skip
def test_a_bad_endpoint_is_unknown_never_closed_and_changes_no_condition(
    cluster: Cluster, operator: OperatorProcess, mode: str, reason: str
) -> None:
    node = cluster.node("n1")
    host = cluster.worker_pod("w0", node=node)
    cluster.worker_pod("w1", node=node)
    cluster.policy(
        safety={"maxUnreadyPods": 1, "stormThreshold": "100%"},
        watch={"longPollSeconds": 2, "timeoutSeconds": 1, "pollIntervalSeconds": 1},
    )
    cluster.workers.trip(host, trips=1)
    eventually(lambda: cluster.condition_status("w0") == "False")
    if mode == "refused":
        cluster.workers.set(host, listening=False)
    else:
        cluster.workers.set(host, mode=mode)
    # Unknown at once; the reason settles on what the endpoint does now (a stream cut as the
    # worker stopped listening is "answer cut short", its next connection refused).
    status = eventually(
        lambda: (
            (s := cluster.state_of("w0")).get("state") == "unknown"
            and s["endpoint"]["reason"].startswith(reason)
            and s
        ),
        timeout=15,
    )
    assert status["endpoint"]["reachable"] is False
    assert status["trips"] == 1  # the last known counts stay
    assert eventually(lambda: cluster.events("EndpointUnreachable", name="w0"))
    assert cluster.condition_status("w0") == "False"  # unknown is not evidence of a recovery
    assert operator.alive()
    errors = operator.metrics()
    assert (
        sum(
            v
            for k, v in errors.items()
            if k.startswith("circuitgate_operator_endpoint_errors_total")
        )
        >= 1
    )


def test_a_selected_pod_without_the_gate_gets_one_warning(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("n1")
    host = cluster.worker_pod("plain", node=node, gated=False)
    cluster.worker_pod("other", node=node)
    cluster.policy(safety={"stormThreshold": "100%", "maxUnreadyPods": "100%"})
    warning = eventually(lambda: cluster.events("ReadinessGateMissing", name="plain"))
    cluster.workers.trip(host, trips=1)
    eventually(lambda: cluster.state_of("plain").get("state") == "open")
    operator.settle(f"{cluster.namespace}/workers")
    (again,) = cluster.events("ReadinessGateMissing", name="plain")
    assert again["count"] == warning[0]["count"] == 1
    assert cluster.condition("plain") is None
    assert operator.alive()


def test_a_deleted_pod_stops_its_watcher_and_its_state_goes_with_it(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("n1")
    host = cluster.worker_pod("w0", node=node)
    cluster.worker_pod("w1", node=node)
    cluster.policy(watch={"longPollSeconds": 60, "timeoutSeconds": 5, "pollIntervalSeconds": 10})
    eventually(lambda: cluster.circuit_state("w0"))
    eventually(lambda: cluster.workers.show(host)["open_requests"] == 1)  # a held long-poll
    assert operator.metrics()["circuitgate_operator_watched_pods"] == 2
    cluster.core.delete_namespaced_pod("w0", cluster.namespace, grace_period_seconds=0)
    eventually(lambda: cluster.workers.show(host)["open_requests"] == 0, timeout=5)
    eventually(lambda: operator.metrics()["circuitgate_operator_watched_pods"] == 1)
    # The garbage collector removes the CircuitState through its owner reference.
    eventually(lambda: cluster.circuit_state("w0") is None, timeout=20)


def test_policy_changes_apply_without_a_restart(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("n1")
    a = cluster.worker_pod("a0", node=node, labels={"app": "worker", "queue": "a"})
    cluster.worker_pod("a1", node=node, labels={"app": "worker", "queue": "a"})
    cluster.worker_pod("b0", node=node, labels={"app": "worker", "queue": "b"})
    cluster.policy(safety={"maxUnreadyPods": "100%", "stormThreshold": "100%"})
    cluster.workers.trip(a, trips=1)
    eventually(lambda: cluster.condition_status("a0") == "False")
    eventually(lambda: cluster.policy_status().get("matchedPods") == 3)

    cluster.patch_policy("workers", {"spec": {"selector": {"matchLabels": {"queue": "b"}}}})
    # a0 is no longer watched: its condition is given back and its state removed.
    eventually(lambda: cluster.condition_status("a0") == "True")
    assert cluster.condition("a0")["reason"] == "CircuitgateReleased"  # type: ignore[index]
    eventually(lambda: cluster.circuit_state("a0") is None and cluster.circuit_state("a1") is None)
    status = eventually(lambda: (s := cluster.policy_status()).get("observedGeneration") == 2 and s)
    assert status["matchedPods"] == 1

    # Readiness off: nothing is marked unready any more.
    selector = {"matchLabels": {"app": "worker", "queue": None}}  # a merge patch
    cluster.patch_policy(
        "workers", {"spec": {"selector": selector, "readiness": {"enabled": False}}}
    )
    eventually(lambda: cluster.policy_status().get("matchedPods") == 3)
    operator.settle(f"{cluster.namespace}/workers")
    assert cluster.condition_status("a0") == "True"


def test_repeated_events_are_aggregated(cluster: Cluster, operator: OperatorProcess) -> None:
    node = cluster.node("n1")
    host = cluster.worker_pod("w0", node=node)
    cluster.worker_pod("w1", node=node)
    cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
    eventually(lambda: cluster.condition_status("w0") == "True")
    for round_ in range(3):
        cluster.workers.trip(host, trips=round_ + 1)
        eventually(lambda: cluster.condition_status("w0") == "False")
        cluster.workers.close(host)
        eventually(lambda: cluster.condition_status("w0") == "True")
    (closed,) = eventually(
        lambda: [e for e in cluster.events("CircuitClosed", name="w0") if e["count"] == 3]
    )
    assert closed["firstTimestamp"] <= closed["lastTimestamp"]
    assert len(cluster.events("PodMarkedReady", name="w0")) == 1
