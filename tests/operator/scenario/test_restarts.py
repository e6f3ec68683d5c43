"""Restarts and takeovers on a real API server: a new operator (or a replica resumed after a
pause) decides only on complete listings, so it never overshoots a cap counted on a partial
view, nor acts on objects deleted while it was not looking."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from circuitgate_devkit.cluster.accounts import PEERED, TAKEOVER
from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.names import CONDITION_TYPE

pytestmark = pytest.mark.cluster


def unready_pods(cluster: Cluster) -> set[str]:
    """Pods whose circuitgate condition is False, from one listing."""
    listed = cluster.core.list_namespaced_pod(cluster.namespace)
    return {
        pod.metadata.name
        for pod in listed.items
        for c in pod.status.conditions or ()
        if c.type == CONDITION_TYPE and c.status == "False"
    }


@contextmanager
def most_unready(cluster: Cluster) -> Iterator[list[int]]:
    """Watch the number of unready pods for as long as the block runs; yields [most seen]."""
    most = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], len(unready_pods(cluster)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield most
    finally:
        stop.set()
        watcher.join()


def test_a_restart_counts_every_unready_pod_before_deciding(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """Held back by the cap: listed first by name (``a-*``), they reach a new operator before
    the pods already unready (``z-*``) do, in kopf's own listing."""
    node = cluster.node("n1")
    held = [f"a-{i}" for i in range(4)]
    marked = ["z-0", "z-1"]
    others = [f"m-{i:03}" for i in range(120)]
    hosts = {p: cluster.worker_pod(p, node=node) for p in held + marked + others}
    first = start_operator()
    cluster.policy(safety={"maxUnreadyPods": 2, "stormThreshold": 100})
    policy = f"{cluster.namespace}/workers"
    eventually(lambda: cluster.policy_status().get("matchedPods") == len(hosts), timeout=60)
    for pod in marked:
        cluster.workers.trip(hosts[pod], trips=1)
    eventually(lambda: unready_pods(cluster) == set(marked))
    for pod in held:
        cluster.workers.trip(hosts[pod], trips=1)
    eventually(lambda: (c := cluster.policy_condition("Capped")) and c["status"] == "True")
    first.settle(policy)
    assert unready_pods(cluster) == set(marked)

    first.kill()
    with most_unready(cluster) as most:
        second = start_operator()
        eventually(lambda: second.metrics()['circuitgate_operator_circuits{state="open"}'] == 6)
        second.settle(policy)
    assert most[0] == 2
    assert unready_pods(cluster) == set(marked)


def test_a_replica_resumed_after_a_deletion_forgets_the_deleted_policy(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    node = cluster.node("n1")
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(3)}
    cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": 100})
    cluster.policy("extra", selector={"matchLabels": {"app": "worker"}})
    # The low replica is active first, so it sees both policies, then pauses for the high one.
    low = start_operator(*PEERED, "--priority", "100", standalone=False, name="low")
    overlapping = eventually(
        lambda: (c := cluster.policy_condition("Overlapping")) and c["status"] == "True",
        timeout=TAKEOVER,  # a peered replica's first decisions wait for a takeover to settle
    )
    assert overlapping
    high = start_operator(*PEERED, "--priority", "200", standalone=False, name="high")
    eventually(lambda: "Pausing operations" in low.tail(400), what="the low replica pauses")
    cluster.delete_policy("extra")
    # The high replica has just taken over: its deletion handler waits out the takeover hold
    # too, and once more (2 s) if the policy's loop is still stopping.
    eventually(lambda: cluster.policy_object("extra") is None, timeout=TAKEOVER)
    eventually(
        lambda: (c := cluster.policy_condition("Overlapping")) and c["status"] == "False",
        timeout=TAKEOVER,
    )
    eventually(lambda: all(cluster.condition_status(p) == "True" for p in hosts))

    high.kill()
    cluster.workers.trip(hosts["w0"], trips=1)
    eventually(
        lambda: cluster.condition_status("w0") == "False",
        timeout=TAKEOVER + 10,
        what="the resumed replica acts on the trip",
    )
    assert cluster.policy_condition("Overlapping")["status"] == "False"  # type: ignore[index]


def test_a_stale_open_state_read_after_a_restart_does_not_keep_a_gone_endpoint_unready(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """The CircuitState a new operator reads says open, but the endpoint no longer answers:
    that is evidence of an open circuit only until the open period it showed is over (a live
    breaker would be half-open by then), and then the pod is given back."""
    node = cluster.node("n1")
    host = cluster.worker_pod("w0", node=node)
    cluster.worker_pod("w1", node=node)
    first = start_operator()
    cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
    eventually(lambda: cluster.condition_status("w0") == "True")
    cluster.workers.trip(host, trips=1, open_for=8)
    eventually(lambda: cluster.condition_status("w0") == "False")
    assert cluster.state_of("w0")["state"] == "open"

    first.kill()
    cluster.workers.set(host, listening=False)
    second = start_operator()
    eventually(lambda: cluster.state_of("w0").get("state") == "unknown")
    condition = eventually(
        lambda: (c := cluster.condition("w0")) and c["status"] == "True" and c, timeout=30
    )
    assert condition["reason"] == "CircuitgateReleased"
    # The Event is posted after the condition is written, so it may trail it.
    assert eventually(lambda: cluster.events("PodMarkedReady", name="w0"))
    assert second.alive()
