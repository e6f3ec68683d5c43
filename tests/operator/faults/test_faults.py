"""Process-level fault injection against the real API server: the operator reaches it only
through a fault proxy (429, 5xx, resets, latency, watch streams cut) and is SIGKILLed and
restarted at seeded random points of an incident; a paused replica misses a deletion. The
safety promises are checked all along from the API server (`checker.InvariantChecker`), and
at the end the cluster must be back to the admin's state.

Figures (requests faulted, restarts, samples, violations) are printed: run with ``-s``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from circuitgate_devkit.cluster.accounts import PEERED, TAKEOVER
from circuitgate_devkit.cluster.fault_proxy import FaultProxy, Faults
from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.names import CONDITION_TYPE

from .checker import InvariantChecker

pytestmark = pytest.mark.cluster

GPU = {"nvidia.com/gpu.present": "true"}
STORMY = Faults(
    too_many=0.08, server_error=0.06, reset=0.04, latency=0.1, delay=0.3, cut_watches=(1.0, 4.0)
)
MAX_UNREADY, MAX_CORDONED, STORM = 2, 1, 5


def incident_policy() -> dict[str, Any]:
    return {
        "nodeRemediation": {
            "enabled": True,
            "nodeSelector": GPU,
            "tripThreshold": 2,
            "minDistinctPods": 2,
            "windowSeconds": 60,
            "cooldownSeconds": 3,
        },
        "safety": {
            "maxUnreadyPods": MAX_UNREADY,
            "maxCordonedNodes": MAX_CORDONED,
            "stormThreshold": STORM,
        },
    }


@pytest.fixture
def checker(cluster: Cluster) -> Iterator[Callable[..., InvariantChecker]]:
    started: list[InvariantChecker] = []

    def start(policy: str, max_unready: int, max_cordoned: int) -> InvariantChecker:
        started.append(InvariantChecker(cluster, policy, max_unready, max_cordoned).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()


def back_to_the_admins_state(cluster: Cluster) -> bool:
    """No False condition, cordon, taint or annotation of ours left."""
    for pod in cluster.core.list_namespaced_pod(cluster.namespace).items:
        for condition in pod.status.conditions or []:
            if condition.type == CONDITION_TYPE and condition.status != "True":
                return False
    for name in cluster.nodes:
        node = cluster.node_object(name)
        marks = [k for k in node["metadata"].get("annotations") or {} if "cordoned" in k]
        taints = [t for t in node["spec"].get("taints") or [] if t["key"].startswith("circuitgate")]
        if node["spec"].get("unschedulable") or marks or taints:
            return False
    return True


def report(what: str, proxy: FaultProxy, checker: InvariantChecker, restarts: int) -> None:
    print(
        f"\n{what}: {proxy.faulted} faults in {proxy.requests} requests"
        f" ({dict(proxy.counts)}); {restarts} restarts; {checker.samples} samples, at most "
        f"{checker.most_unready} unready and {checker.most_cordoned} cordoned, "
        f"{checker.storms} storms; {len(checker.violations)} violations {checker.violations[:5]}"
    )


@pytest.mark.parametrize("seed", [16, 61])
def test_an_incident_under_api_faults_and_restarts_keeps_every_promise(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    proxy: FaultProxy,
    checker: Callable[..., InvariantChecker],
    seed: int,
) -> None:
    shuffle = random.Random(seed)
    nodes = [cluster.node(f"n{i}", labels=GPU) for i in range(3)]
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=nodes[i % 3]) for i in range(8)}
    operator = start_operator()
    cluster.policy(**incident_policy())
    eventually(lambda: len(cluster.circuit_states()) == 8, timeout=30, what="8 CircuitStates")
    watch = checker("workers", MAX_UNREADY, MAX_CORDONED)
    proxy.faults = STORMY
    restarts = 0

    def restart_at_random() -> None:
        nonlocal restarts
        if shuffle.random() < 0.6:
            operator.kill()
            time.sleep(shuffle.uniform(0.0, 1.0))
            operator.start()
            restarts += 1

    # Phase 1: pods trip one after another, above the unready cap; nodes collect trips.
    order = list(hosts)
    shuffle.shuffle(order)
    for trips, name in enumerate(order[:4], start=1):
        cluster.workers.trip(hosts[name], trips=trips)
        time.sleep(shuffle.uniform(0.1, 0.8))
        restart_at_random()
    eventually(lambda: watch.most_unready == MAX_UNREADY, timeout=30, what="the cap reached")
    restart_at_random()  # with pods held back by the cap
    # Phase 2: a shared outage: most pods open at once.
    cluster.workers.bulk(list(hosts.values()), breaker={"state": "open", "trips": 9,
                         "opened_at": time.time(), "may_close_at": time.time() + 300,
                         "consumption_paused": True})  # fmt: skip
    restart_at_random()
    eventually(lambda: watch.storms >= 1, timeout=30, what="the storm seen")
    restart_at_random()  # in the storm
    # Phase 3: everything closes; after the cool-down the cluster is the admin's again.
    for host in hosts.values():
        cluster.workers.close(host)
    restart_at_random()
    eventually(
        lambda: back_to_the_admins_state(cluster), timeout=90, what="the admin's state again"
    )
    proxy.faults = Faults()
    watch.stop()
    report(f"incident (seed {seed})", proxy, watch, restarts)
    assert proxy.faulted > 0 and watch.samples > 50
    assert watch.violations == []


def test_a_policy_deleted_while_a_replica_was_paused_is_gone_when_it_takes_over(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    proxy: FaultProxy,
    checker: Callable[..., InvariantChecker],
) -> None:
    """Two replicas with the webhook: low acts first, then pauses for high; a policy is
    deleted meanwhile; high is killed, low takes over and must act as if it never existed,
    and keep the webhook configured."""
    # The chart's release made the peering object "circuitgate" in the test's namespace.
    common = (*PEERED, "--webhook",
              "--webhook-host", "127.0.0.1", "--webhook-listen", "127.0.0.1")  # fmt: skip
    node = cluster.node("n1")
    hosts = {f"w{i}": cluster.worker_pod(f"w{i}", node=node) for i in range(3)}
    safety = {"safety": {"maxUnreadyPods": 1, "stormThreshold": 100}}
    cluster.policy("a", **safety)
    low = start_operator(*common, "--priority", "100", "--webhook-port", str(free_port()),
                         standalone=False, name="low")  # fmt: skip
    eventually(lambda: all(cluster.condition_status(p) == "True" for p in hosts), timeout=30)
    watch = checker("a", 1, 0)
    high = start_operator(*common, "--priority", "200", "--webhook-port", str(free_port()),
                          standalone=False, name="high")  # fmt: skip
    try:
        # The same pods, selected twice: neither policy acts on them while both live.
        cluster.policy("b", **safety)
        eventually(lambda: cluster.events("OverlappingPolicies"), timeout=30, what="the overlap")
        eventually(lambda: "Pausing operations" in low.tail(400), timeout=30, what="low paused")
        eventually(
            lambda: high.reconciles(f"{cluster.namespace}/a") > 0,
            timeout=TAKEOVER,
            what="high acting",
        )
        proxy.faults = Faults(too_many=0.05, server_error=0.05, cut_watches=(1.0, 4.0))
        cluster.delete_policy("b")  # low is paused: only high sees this
        eventually(lambda: cluster.policy_object("b") is None, timeout=30, what="b gone")
        high.kill()
        # low takes over (the peering lifetime is 4 s) and hears a real trip.
        cluster.workers.trip(hosts["w0"], trips=1)
        eventually(
            lambda: cluster.condition_status("w0") == "False", timeout=60, what="low acts on w0"
        )
        eventually(lambda: webhook_url_port(cluster, low.webhook_name) == low.webhook_port,
                   timeout=30, what="low keeps the webhook")  # fmt: skip
        gates = cluster.core.create_namespaced_pod(
            cluster.namespace,
            {"metadata": {"name": "new", "labels": {"app": "worker"}},
             "spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}},
        ).spec.readiness_gates  # fmt: skip
        assert [g.condition_type for g in gates or []] == [CONDITION_TYPE]
        cluster.workers.close(hosts["w0"])
        eventually(lambda: back_to_the_admins_state(cluster), timeout=60, what="the admin's state")
    finally:  # peers leave the configuration to a successor: this test has none
        cluster.control_plane.kubectl(
            "delete", "mutatingwebhookconfiguration", low.webhook_name, check=False
        )
    watch.stop()
    report("pause and delete", proxy, watch, 0)
    assert watch.violations == []


def webhook_url_port(cluster: Cluster, name: str) -> int | None:
    result = cluster.control_plane.kubectl(
        "get", "mutatingwebhookconfiguration", name, "-o", "json", check=False
    )
    if result.returncode != 0:
        return None
    url = json.loads(result.stdout)["webhooks"][0]["clientConfig"].get("url", "")
    return int(url.split(":")[2].split("/")[0]) if url else None
