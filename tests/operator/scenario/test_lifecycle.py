"""The operator's lifecycle on a real API server: a policy deleted mid-incident cleans up
after itself, an operator killed mid-incident comes back without repeating anything, and of
two replicas only one acts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from circuitgate_devkit.cluster.accounts import PEERED, TAKEOVER
from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.decide.nodes import CORDONED_BY

pytestmark = pytest.mark.cluster

GPU = {"nvidia.com/gpu.present": "true"}
POLICY: dict[str, Any] = {
    "nodeRemediation": {
        "enabled": True,
        "nodeSelector": GPU,
        "tripThreshold": 2,
        "minDistinctPods": 2,
        "cooldownSeconds": 600,
    },
    "safety": {"maxUnreadyPods": 2, "stormThreshold": 100},
}


def incident(cluster: Cluster) -> tuple[str, dict[str, str]]:
    """A GPU node whose two pods tripped (both unready, node cordoned), and a healthy pod."""
    node = cluster.node("gpu", labels=GPU)
    other = cluster.node("other", labels=GPU)
    hosts = {
        "w0": cluster.worker_pod("w0", node=node),
        "w1": cluster.worker_pod("w1", node=node),
        "w2": cluster.worker_pod("w2", node=other),
    }
    cluster.policy(**POLICY)
    eventually(lambda: all(cluster.condition_status(p) == "True" for p in hosts))
    cluster.workers.trip(hosts["w0"], trips=1)
    cluster.workers.trip(hosts["w1"], trips=1)
    eventually(lambda: cluster.condition_status("w0") == cluster.condition_status("w1") == "False")
    eventually(lambda: cluster.node_object(node)["spec"].get("unschedulable"))
    return node, hosts


def test_a_policy_deleted_mid_incident_undoes_what_it_did(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    node, _ = incident(cluster)
    eventually(lambda: len(cluster.circuit_states()) == 3)
    assert "circuitgate.io/cleanup" in cluster.policy_object()["metadata"]["finalizers"]  # type: ignore[index]

    cluster.delete_policy("workers")
    eventually(lambda: cluster.policy_object() is None, what="the finalizer let go")
    for pod in ("w0", "w1"):
        condition = cluster.condition(pod)
        assert condition is not None and condition["status"] == "True"
        assert condition["reason"] == "CircuitgateReleased"
    node_object = cluster.node_object(node)
    assert not node_object["spec"].get("unschedulable")
    assert not any(
        t["key"] == "circuitgate.io/tripped" for t in node_object["spec"].get("taints") or []
    )
    assert CORDONED_BY not in (node_object["metadata"].get("annotations") or {})
    assert cluster.circuit_states() == []
    assert eventually(lambda: cluster.node_events(node, "NodeUncordoned"))
    # And with no policy, nothing watches these pods any more.
    eventually(lambda: operator.metrics()["circuitgate_operator_watched_pods"] == 0)


def test_an_operator_killed_mid_incident_repeats_nothing_after_a_restart(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    first = start_operator()
    node, hosts = incident(cluster)
    eventually(lambda: cluster.policy_status().get("unreadyPods") == 2)
    # Every Event of the incident has landed (none is still on its way when it is killed).
    landed = {(r, p) for r in ("CircuitOpened", "PodMarkedUnready") for p in ("w0", "w1")}
    eventually(
        lambda: landed <= {(e["reason"], e["involvedObject"]["name"]) for e in cluster.events()},
        what="the incident's pod Events",
    )
    eventually(lambda: cluster.node_events(node, "NodeCordoned"))
    first.kill()

    def snapshot() -> dict[str, Any]:
        return {
            "pods": {p: cluster.pod(p)["metadata"]["resourceVersion"] for p in hosts},
            "node": cluster.node_object(node)["metadata"]["resourceVersion"],
            "states": {
                s["metadata"]["name"]: s["metadata"]["resourceVersion"]
                for s in cluster.circuit_states()
            },
            "policy status": cluster.policy_status(),
            "events": sorted(
                (e["reason"], e["involvedObject"]["name"], e["count"]) for e in cluster.events()
            ),
            "node events": sorted((e["reason"], e["count"]) for e in cluster.node_events(node)),
        }

    before = snapshot()
    second = start_operator()
    # It has rebuilt its view (and would have acted by now if it were going to).
    eventually(lambda: second.metrics()['circuitgate_operator_circuits{state="open"}'] == 2)
    second.settle(f"{cluster.namespace}/workers")
    assert snapshot() == before
    assert second.writes() == 0
    # And it is in charge: a recovery is acted on.
    cluster.workers.close(hosts["w0"])
    eventually(lambda: cluster.condition_status("w0") == "True")


def test_of_two_replicas_only_one_acts_and_the_other_takes_over(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    high = start_operator(*PEERED, "--priority", "200", standalone=False, name="high")
    # With a named peering object, a replica starts paused and stays so while it sees a live
    # peer of higher priority.
    low = start_operator(*PEERED, "--priority", "100", standalone=False, name="low")
    node = cluster.node("n1")
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(3)}
    cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": 100})
    # A peered replica's first decisions wait for what a replica before it had sent.
    eventually(lambda: all(cluster.condition_status(p) == "True" for p in hosts), timeout=TAKEOVER)
    cluster.workers.trip(hosts["w0"], trips=1)
    eventually(lambda: cluster.condition_status("w0") == "False")

    def actions(process: OperatorProcess) -> float:
        return sum(
            v
            for k, v in process.metrics().items()
            if k.startswith("circuitgate_operator_actions_total")
        )

    eventually(lambda: actions(high) >= 4)  # three first Trues and one unready
    assert actions(low) == 0 and low.writes() == 0

    high.kill()
    cluster.workers.close(hosts["w0"])
    eventually(
        lambda: cluster.condition_status("w0") == "True",
        timeout=TAKEOVER,
        what="the low replica takes over",
    )
    # Counted once the whole plan is applied, a moment after the condition landed.
    eventually(lambda: actions(low) >= 1)
