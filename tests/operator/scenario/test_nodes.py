"""Node remediation on the real API server: cordon, taint and annotate a node whose pods keep
tripping, undo only that after the cool-down, and leave other people's cordons alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from circuitgate_devkit.cluster.accounts import PEERED, OperatorIdentity
from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.fault_proxy import FaultProxy, Faults
from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.decide.nodes import (
    CORDONED_AT,
    CORDONED_BY,
    KEEP_CORDONED,
    RELEASED_AT,
    TAINTED,
)
from circuitgate_operator.names import EVICTED_CONDITION_TYPE

pytestmark = pytest.mark.cluster

GPU = {"nvidia.com/gpu.present": "true"}
OUR_TAINT = {"key": "circuitgate.io/tripped", "value": "gpu", "effect": "NoSchedule"}


def remediation(**overrides: Any) -> dict[str, Any]:
    return {
        "nodeRemediation": {
            "enabled": True,
            "nodeSelector": GPU,
            "tripThreshold": 3,
            "minDistinctPods": 2,
            "windowSeconds": 60,
            "cooldownSeconds": 3,
            "taint": {"key": "circuitgate.io/tripped", "value": "gpu"},
            **overrides,
        },
        "safety": {"maxUnreadyPods": "100%", "stormThreshold": 100, "maxCordonedNodes": 1},
    }


def trip_again(cluster: Cluster, host: str, trips: int) -> None:
    """Close and re-open a breaker: one more trip, with a new opened_at. The watcher may see
    the close or not; the trip counter tells the operator either way."""
    cluster.workers.close(host)
    cluster.workers.trip(host, trips=trips)


def cordoned_gpu_node(cluster: Cluster) -> tuple[str, dict[str, str]]:
    """A GPU node with two worker pods, cordoned by us after three trips (long cool-down)."""
    node = cluster.node("gpu", labels=GPU)
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(2)}
    cluster.policy(**remediation(cooldownSeconds=600))
    eventually(lambda: len(cluster.circuit_states()) == 2)
    cluster.workers.trip(hosts["w0"], trips=1)
    cluster.workers.trip(hosts["w1"], trips=1)
    trip_again(cluster, hosts["w0"], 2)
    eventually(lambda: spec_of(cluster, node).get("unschedulable"))
    return node, hosts


def cordoned_on_two_trips(cluster: Cluster, **overrides: Any) -> tuple[str, dict[str, str]]:
    """A GPU node with two worker pods, cordoned by us once both tripped (``tripThreshold``
    2; ``overrides`` for the rest of ``nodeRemediation``)."""
    node = cluster.node("gpu", labels=GPU)
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(2)}
    cluster.policy(**remediation(tripThreshold=2, **overrides))
    eventually(lambda: len(cluster.circuit_states()) == 2)
    cluster.workers.trip(hosts["w0"], trips=1)
    cluster.workers.trip(hosts["w1"], trips=1)
    eventually(lambda: spec_of(cluster, node).get("unschedulable"))
    return node, hosts


def drain(cluster: Cluster, node: str) -> None:
    """``kubectl drain`` as an admin runs it; the evictions, not its end, are what count."""
    cluster.control_plane.kubectl(
        "drain", node, "--force", "--ignore-daemonsets", "--timeout=2s", check=False
    )


def spec_of(cluster: Cluster, node: str) -> dict[str, Any]:
    return dict(cluster.node_object(node).get("spec") or {})


def annotations_of(cluster: Cluster, node: str) -> dict[str, str]:
    return dict(cluster.node_object(node)["metadata"].get("annotations") or {})


def test_a_tripping_node_is_cordoned_tainted_annotated_and_restored_after_the_cool_down(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    admin_taint = {"key": "maintenance", "effect": "PreferNoSchedule"}
    bad = cluster.node("bad", labels=GPU, taints=[admin_taint])
    cpu = cluster.node("cpu")
    hosts = {
        "b0": cluster.worker_pod("b0", node=bad),
        "b1": cluster.worker_pod("b1", node=bad),
        "c0": cluster.worker_pod("c0", node=cpu),
        "c1": cluster.worker_pod("c1", node=cpu),
    }
    cluster.policy(**remediation())
    eventually(lambda: len(cluster.circuit_states()) == 4)
    # Three trips from two pods on each node; only "bad" is a GPU node.
    for name in hosts:
        cluster.workers.trip(hosts[name], trips=1)
    trip_again(cluster, hosts["c0"], 2)
    trip_again(cluster, hosts["b0"], 2)

    spec = eventually(lambda: (s := spec_of(cluster, bad)).get("unschedulable") and s)
    assert admin_taint in spec["taints"] and OUR_TAINT in spec["taints"]
    marks = annotations_of(cluster, bad)
    assert marks[CORDONED_BY] == f"{cluster.namespace}/workers"
    assert marks[TAINTED] == "circuitgate.io/tripped=gpu:NoSchedule"
    assert CORDONED_AT in marks and "3 trips from 2 pods" in marks["circuitgate.io/cordon-reason"]
    (event,) = eventually(lambda: cluster.node_events(bad, "NodeCordoned"))
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Node"
    assert eventually(lambda: cluster.policy_status().get("cordonedNodes") == 1)
    assert not spec_of(cluster, cpu).get("unschedulable")

    for host in hosts.values():
        cluster.workers.close(host)
    # Three quiet seconds later: uncordoned, our taint and marks gone, the admin's taint kept.
    spec = eventually(
        lambda: (s := spec_of(cluster, bad)) and not s.get("unschedulable") and s, timeout=15
    )
    assert admin_taint in spec["taints"] and OUR_TAINT not in spec["taints"]
    marks = annotations_of(cluster, bad)
    assert not {CORDONED_BY, CORDONED_AT, TAINTED} & set(marks)
    assert RELEASED_AT in marks  # the trips it was cordoned for will not cordon it again
    assert eventually(lambda: cluster.node_events(bad, "NodeUncordoned"))
    assert eventually(lambda: cluster.policy_status().get("cordonedNodes") == 0)
    operator.settle(f"{cluster.namespace}/workers")
    assert not spec_of(cluster, bad).get("unschedulable")


def test_the_cordon_cap_holds_across_nodes(cluster: Cluster, operator: OperatorProcess) -> None:
    nodes = [cluster.node(f"gpu{i}", labels=GPU) for i in range(3)]
    hosts = {
        f"w{n}{i}": cluster.worker_pod(f"w{n}{i}", node=nodes[n])
        for n in range(3)
        for i in range(2)
    }
    cluster.policy(**remediation(cooldownSeconds=600))  # maxCordonedNodes: 1
    eventually(lambda: len(cluster.circuit_states()) == 6)
    for host in hosts.values():
        cluster.workers.trip(host, trips=1)
        trip_again(cluster, host, 2)

    def cordoned() -> list[str]:
        return [n for n in nodes if spec_of(cluster, n).get("unschedulable")]

    eventually(lambda: len(cordoned()) == 1)
    capped = eventually(
        lambda: (c := cluster.policy_condition("Capped")) and c["status"] == "True" and c
    )
    assert capped["reason"] == "SafetyCapReached"
    assert eventually(lambda: cluster.events("SafetyCapReached"))
    operator.settle(f"{cluster.namespace}/workers")
    assert len(cordoned()) == 1


def test_a_node_an_admin_cordoned_or_excluded_is_never_touched(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cordoned = cluster.node("cordoned", labels=GPU, unschedulable=True)
    excluded = cluster.node("excluded", labels={**GPU, "circuitgate.io/exclude": "true"})
    pods = {}
    for node, prefix in ((cordoned, "c"), (excluded, "e")):
        for i in range(2):
            pods[f"{prefix}{i}"] = cluster.worker_pod(f"{prefix}{i}", node=node)
    cluster.policy(**remediation())
    eventually(lambda: len(cluster.circuit_states()) == 4)
    before = {
        n: cluster.node_object(n)["metadata"]["resourceVersion"] for n in (cordoned, excluded)
    }
    for host in pods.values():
        cluster.workers.trip(host, trips=1)
    for name, host in pods.items():
        trip_again(cluster, host, 2)
        if name.endswith("1"):
            trip_again(cluster, host, 3)
    eventually(lambda: all(cluster.condition_status(p) == "False" for p in pods))
    # A node circuitgate did not cordon has no cool-down: what it decides now, it decides later.
    operator.settle(f"{cluster.namespace}/workers")
    after = {n: cluster.node_object(n)["metadata"]["resourceVersion"] for n in (cordoned, excluded)}
    assert after == before
    assert spec_of(cluster, cordoned).get("unschedulable") is True
    assert not spec_of(cluster, excluded).get("unschedulable")
    assert not cluster.node_events(cordoned) and not cluster.node_events(excluded)


def test_an_admin_uncordon_is_respected_until_the_next_incident(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node, hosts = cordoned_gpu_node(cluster)

    cluster.control_plane.kubectl("uncordon", node)
    # circuitgate lets go: its taint and marks are removed, and it does not cordon again
    # for the trips it already acted on.
    eventually(lambda: RELEASED_AT in annotations_of(cluster, node))
    assert OUR_TAINT not in (spec_of(cluster, node).get("taints") or [])
    assert CORDONED_BY not in annotations_of(cluster, node)
    operator.settle(f"{cluster.namespace}/workers")
    assert not spec_of(cluster, node).get("unschedulable")

    # A new incident: three new trips from two pods.
    trip_again(cluster, hosts["w0"], 3)
    trip_again(cluster, hosts["w1"], 2)
    trip_again(cluster, hosts["w0"], 4)
    eventually(lambda: spec_of(cluster, node).get("unschedulable"))
    assert annotations_of(cluster, node)[CORDONED_BY] == f"{cluster.namespace}/workers"


def test_tripped_pods_are_evicted_as_far_as_the_disruption_budget_allows(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node = cluster.node("gpu", labels=GPU)
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(3)}
    cluster.control_plane.kubectl(
        "create", "poddisruptionbudget", "workers", "-n", cluster.namespace,
        "--selector=app=worker", "--min-available=2",
    )  # fmt: skip
    # The disruption controller (a real one) works out that one pod may go.
    eventually(
        lambda: cluster.control_plane.kubectl(
            "get", "pdb", "workers", "-n", cluster.namespace,
            "-o", "jsonpath={.status.disruptionsAllowed}",
        ).stdout == "1",
        timeout=20,
    )  # fmt: skip
    cluster.policy(**remediation(tripThreshold=2, evictTrippedPods=True, cooldownSeconds=600))
    eventually(lambda: len(cluster.circuit_states()) == 3)
    cluster.workers.trip(hosts["w0"], trips=1)
    cluster.workers.trip(hosts["w1"], trips=1)
    eventually(lambda: spec_of(cluster, node).get("unschedulable"))

    def evicted() -> set[str]:
        return {p for p in hosts if cluster.pod(p)["metadata"].get("deletionTimestamp")}

    gone = eventually(lambda: evicted())
    (pod,) = gone
    assert pod in {"w0", "w1"}
    assert eventually(lambda: cluster.events("PodEvicted", name=pod))
    # The other tripped pod's eviction is retried (every 5 s), and the budget refuses it again.
    refused = 'circuitgate_operator_actions_suppressed_total{action="evict",cause="budget"}'
    before = operator.metrics().get(refused, 0)
    eventually(lambda: operator.metrics().get(refused, 0) > before, timeout=15)
    assert evicted() == gone
    blocked = operator.metrics()
    assert blocked.get('circuitgate_operator_actions_total{action="evict"}') == 1


def test_a_node_excluded_after_our_cordon_is_given_back_at_once(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node, _ = cordoned_gpu_node(cluster)

    cluster.core.patch_node(node, {"metadata": {"labels": {"circuitgate.io/exclude": "true"}}})
    eventually(lambda: not spec_of(cluster, node).get("unschedulable"), what="our cordon undone")
    assert OUR_TAINT not in (spec_of(cluster, node).get("taints") or [])
    assert CORDONED_BY not in annotations_of(cluster, node)
    status = eventually(lambda: (s := cluster.policy_status()).get("cordonedNodes") == 0 and s)
    assert status["cordonedNodes"] == 0  # its slot of the cap is free again


def test_a_policy_deleted_while_its_cordon_is_in_flight_leaves_no_cordon(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    operator_identity: OperatorIdentity,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """The policy's loop stops in parallel with its deletion handler: a cordon it had sent
    must have landed (and be undone) before the finalizer goes."""
    proxy = FaultProxy(control_plane).start()
    try:
        kubeconfig = proxy.kubeconfig(operator_identity.kubeconfig, tmp_path / "slow-kubeconfig")
        start_operator(env={"KUBECONFIG": str(kubeconfig)})
        node = cluster.node("gpu", labels=GPU)
        hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(2)}
        # No pod to restore (readiness off): the deletion handler has nothing to wait for.
        spec = remediation(tripThreshold=2, cooldownSeconds=600)
        cluster.policy(readiness={"enabled": False}, **spec)
        eventually(lambda: len(cluster.circuit_states()) == 2)
        cluster.workers.trip(hosts["w0"], trips=1)
        eventually(lambda: cluster.state_of("w0").get("state") == "open")

        # Every write from now on is held 4 s by the proxy: the second trip's reconciliation
        # sends its cordon with its other writes, and the policy goes while they are held.
        proxy.faults = Faults(latency=1.0, delay=4.0, writes_only=True)
        delayed = proxy.counts["delayed"]
        cluster.workers.trip(hosts["w1"], trips=1)
        eventually(lambda: proxy.counts["delayed"] >= delayed + 3, timeout=10)
        cluster.delete_policy("workers")

        eventually(lambda: cluster.policy_object("workers") is None, timeout=60)
        proxy.faults = Faults()
        assert not spec_of(cluster, node).get("unschedulable")
        assert CORDONED_BY not in annotations_of(cluster, node)
        assert OUR_TAINT not in (spec_of(cluster, node).get("taints") or [])
    finally:
        proxy.stop()


@pytest.mark.parametrize("admin", ["keep-cordoned", "drain"])
def test_an_admin_who_keeps_or_drains_a_node_we_cordoned_makes_it_theirs(
    cluster: Cluster, operator: OperatorProcess, admin: str
) -> None:
    """``kubectl cordon`` of a node we cordoned changes nothing we could see; the admin's
    annotation, or the evictions of a drain, can be seen, and the cool-down then leaves the
    cordon alone (only our taint and marks go)."""
    node, _ = cordoned_on_two_trips(cluster, cooldownSeconds=15)
    cordoned_at = time.time()

    kubectl = cluster.control_plane.kubectl
    if admin == "keep-cordoned":
        kubectl("annotate", "node", node, f"{KEEP_CORDONED}=true")
    else:
        drain(cluster, node)
    eventually(lambda: CORDONED_BY not in annotations_of(cluster, node), what="our marks gone")
    assert RELEASED_AT in annotations_of(cluster, node)
    assert spec_of(cluster, node).get("unschedulable") is True
    assert OUR_TAINT not in (spec_of(cluster, node).get("taints") or [])
    assert eventually(lambda: cluster.node_events(node, "NodeReleased"))  # not "uncordoned"
    assert not cluster.node_events(node, "NodeUncordoned")

    eventually(lambda: time.time() > cordoned_at + 15, timeout=30, what="the cool-down over")
    operator.settle(f"{cluster.namespace}/workers")
    assert spec_of(cluster, node).get("unschedulable") is True


def test_our_own_eviction_seen_after_a_restart_is_not_taken_for_a_drain(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """A new operator has not seen the trips that led to our evictions; the evicted pods
    (terminating through their grace period) must not read as someone else's drain, which
    would leave our cordon on for good."""
    first = start_operator()
    node, hosts = cordoned_on_two_trips(cluster, evictTrippedPods=True, cooldownSeconds=25)

    def marked_evicted() -> bool:  # granted, and marked as ours (the request after it)
        return any(
            c["type"] == EVICTED_CONDITION_TYPE and c["status"] == "True"
            for p in hosts
            for c in cluster.pod(p)["status"].get("conditions") or ()
        )

    eventually(marked_evicted, what="our eviction granted and marked")

    first.kill()
    second = start_operator()
    second.settle(f"{cluster.namespace}/workers")
    assert annotations_of(cluster, node).get(CORDONED_BY) == f"{cluster.namespace}/workers"
    eventually(
        lambda: not spec_of(cluster, node).get("unschedulable"),
        timeout=60,
        what="our cordon undone after the cool-down",
    )


def test_a_drain_while_the_policy_is_paused_still_makes_the_node_theirs(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """The evidence of a drain lasts only while the evicted pods do (the kubelet deletes
    them): a pause must not hold letting go until it is gone, or the cool-down after the
    pause would uncordon a node the admin drained."""
    node, _ = cordoned_on_two_trips(cluster, cooldownSeconds=15)
    cordoned_at = time.time()
    paused = {"metadata": {"annotations": {"circuitgate.io/paused": "true"}}}
    cluster.patch_policy("workers", paused)
    kubectl = cluster.control_plane.kubectl
    drain(cluster, node)
    eventually(lambda: CORDONED_BY not in annotations_of(cluster, node), what="our marks gone")

    # The kubelet finishes the drain: the evicted pods, and the evidence with them, go.
    kubectl("delete", "pods", "--all", "-n", cluster.namespace, "--force", "--grace-period=0")
    cluster.patch_policy("workers", {"metadata": {"annotations": {"circuitgate.io/paused": None}}})
    eventually(lambda: time.time() > cordoned_at + 15, timeout=30, what="the cool-down over")
    operator.settle(f"{cluster.namespace}/workers")
    assert spec_of(cluster, node).get("unschedulable") is True


def test_the_cordon_cap_holds_for_policies_planning_while_a_cordon_is_in_flight(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    operator_identity: OperatorIdentity,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """Two policies whose pods share two GPU nodes, one node allowed cordoned: each trips on
    its own node at once, and every write is held 4 s, so each plans while the other's
    cordon is still on its way. The cap counts cordons sent, not only those seen back."""
    proxy = FaultProxy(control_plane).start()
    try:
        kubeconfig = proxy.kubeconfig(operator_identity.kubeconfig, tmp_path / "slow-kubeconfig")
        operator = start_operator(env={"KUBECONFIG": str(kubeconfig)})
        n1, n2 = cluster.node("gpu-1", labels=GPU), cluster.node("gpu-2", labels=GPU)
        layout = {"a0": n1, "a1": n1, "a2": n2, "b0": n2, "b1": n2, "b2": n1}
        hosts = {
            pod: cluster.worker_pod(pod, node=node, labels={"app": pod[0]})
            for pod, node in layout.items()
        }
        spec = remediation(tripThreshold=2, cooldownSeconds=600)  # maxCordonedNodes: 1
        for app in "ab":
            selector = {"matchLabels": {"app": app}}
            cluster.policy(f"gpu-{app}", selector=selector, readiness={"enabled": False}, **spec)
        eventually(lambda: len(cluster.circuit_states()) == len(hosts), timeout=30)

        proxy.faults = Faults(latency=1.0, delay=4.0, writes_only=True)
        for pod in ("a0", "a1", "b0", "b1"):
            cluster.workers.trip(hosts[pod], trips=1)
        eventually(lambda: any(spec_of(cluster, n).get("unschedulable") for n in (n1, n2)))
        proxy.faults = Faults()
        for app in "ab":
            operator.settle(f"{cluster.namespace}/gpu-{app}")
        cordoned = [n for n in (n1, n2) if spec_of(cluster, n).get("unschedulable")]
        assert len(cordoned) == 1, cordoned
    finally:
        proxy.stop()


# kopf's default peering lifetime. The scenarios' 4 s is shorter than a write the proxy holds
# here (8 s): kopf cleans the entries it reads as expired before it looks for a higher peer,
# so the low replica's peering worker, 8 s into such a clean, read the high replica's entry
# as expired too, and paused only when no entry had expired (one run in three or so).
OUTLIVES_HELD_WRITES = ("--peering-lifetime", "60")


def test_the_cordon_cap_holds_across_a_takeover_while_a_cordon_is_in_flight(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    operator_identity: OperatorIdentity,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """A replica paused for another lets the writes it sent land (for up to 8 s); the replica
    taking over cannot see them yet, and must not plan on a view without them. Here the old
    replica's cordon of n1 is held 7 s, and n2 trips worse meanwhile."""
    proxy = FaultProxy(control_plane).start()
    try:
        kubeconfig = proxy.kubeconfig(operator_identity.kubeconfig, tmp_path / "slow-kubeconfig")
        low = start_operator(
            *PEERED, *OUTLIVES_HELD_WRITES, "--priority", "100", standalone=False, name="low",
            env={"KUBECONFIG": str(kubeconfig)},
        )  # fmt: skip
        n1, n2 = cluster.node("gpu-1", labels=GPU), cluster.node("gpu-2", labels=GPU)
        layout = {"w0": n1, "w1": n1, "w2": n2, "w3": n2, "w4": n2}
        hosts = {pod: cluster.worker_pod(pod, node=node) for pod, node in layout.items()}
        spec = remediation(tripThreshold=2, cooldownSeconds=600)
        cluster.policy(readiness={"enabled": False}, **spec)
        eventually(lambda: len(cluster.circuit_states()) == len(hosts), timeout=30)

        proxy.faults = Faults(latency=1.0, delay=7.0, writes_only=True)
        cluster.workers.trip(hosts["w0"], trips=1)
        cluster.workers.trip(hosts["w1"], trips=1)
        cordon = f"PATCH /api/v1/nodes/{n1}"
        eventually(lambda: cordon in proxy.held, timeout=20, what="n1's cordon sent")
        for pod in ("w2", "w3", "w4"):
            cluster.workers.trip(hosts[pod], trips=1)
        high = start_operator(
            *PEERED, *OUTLIVES_HELD_WRITES, "--priority", "200", standalone=False, name="high"
        )
        # The low replica hears of the high one on the peering object, whose worker may be
        # waiting for its own keep-alive, held like every write (8 s each): allow two.
        eventually(
            lambda: "Pausing operations" in low.tail(400), timeout=30, what="the low replica pauses"
        )
        eventually(lambda: spec_of(cluster, n1).get("unschedulable"), timeout=20)
        proxy.faults = Faults()
        high.settle(f"{cluster.namespace}/workers")
        cordoned = [n for n in (n1, n2) if spec_of(cluster, n).get("unschedulable")]
        assert cordoned == [n1]
    finally:
        proxy.stop()


def test_outliers_count_toward_node_trips_when_the_policy_says_so(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    gpu, cpu = cluster.node("gpu", labels=GPU), cluster.node("cpu")
    hosts = {f"b{i}": cluster.worker_pod(f"b{i}", node=gpu) for i in range(2)}
    hosts |= {f"h{i}": cluster.worker_pod(f"h{i}", node=cpu) for i in range(4)}
    detection = {"enabled": True, "sustainSeconds": 1, "countTowardNodeTrips": True}
    cluster.policy(**remediation(tripThreshold=2), outlierDetection=detection)
    eventually(lambda: len(cluster.circuit_states()) == 6)
    for name, host in hosts.items():  # the GPU node's two workers fail 40 % of their tasks
        failures = 40 if name.startswith("b") else 0
        calls = {"calls": 100, "failures": failures, "p50_seconds": 1.0, "p90_seconds": 1.5}
        cluster.workers.set(host, breaker={"recent_calls": calls})

    spec = eventually(lambda: (s := spec_of(cluster, gpu)).get("unschedulable") and s)
    assert OUR_TAINT in spec["taints"]
    assert "2 trips from 2 pods" in annotations_of(cluster, gpu)["circuitgate.io/cordon-reason"]
    for name in ("b0", "b1"):
        assert cluster.condition(name)["reason"] == "Outlier"
        assert cluster.state_of(name)["state"] == "closed"
    assert not spec_of(cluster, cpu).get("unschedulable")
