"""One operator watching many worker endpoints on a real API server: what it costs.

A real etcd + kube-apiserver (+ controller manager), N worker pods whose ``status.podIP`` are
distinct loopback addresses served by endpoint processes
(``circuitgate_devkit.cluster.endpoint_server``, the contract's stream and long-poll included;
one process per ``FLEET_SIZE`` addresses, within the open-files limit), and one
``python -m circuitgate_operator`` process following them in ``--mode`` (the policy's
``watch.mode``). Measures:

- settle: from the operator's start to its last write of the start (every pod read and
  marked, then no write for ``QUIET_SECONDS``);
- trip to pod condition False: from the moment a breaker opens to the moment a watch on the
  pods sees its readiness-gate condition False (p50, p99 over ``--trips`` trips, one at a time);
- the policy passes while tripping: how many, their mean duration, how many over 250 ms;
- in steady state: API writes per minute (the operator's own write counter, cross-checked
  with the pods' resourceVersions), API requests per second on what the operator reads and
  writes (the API server's ``apiserver_request_total``, leases and the controller manager's
  own resources left out), operator CPU share of one core; and peak RSS.

Prints the figures and, as the last line, one JSON object.

    python bench/operator_scale.py [--pods 1000] [--mode stream] [--steady-seconds 60] [--trips 40]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, watch

from circuitgate_devkit.cluster.accounts import OperatorIdentity
from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.fake_endpoints import FakeWorkers
from circuitgate_devkit.cluster.fixtures import install_crds
from circuitgate_devkit.cluster.objects import OperatorProcess
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.names import CONDITION_TYPE

NAMESPACE = "bench"
_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_SECONDS = 15.0  # no write for this long after every pod is read and marked: settled
FLEET_SIZE = 8000  # addresses per endpoint process: a listening and a served socket each
# What the operator reads and writes; requests on anything else are the control plane's own.
OPERATOR_RESOURCES = frozenset(
    {"pods", "nodes", "events", "circuitpolicies", "circuitstates", "kopfpeerings",
     "clusterkopfpeerings", "namespaces", "poddisruptionbudgets", "customresourcedefinitions"}
)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_requests(api: client.ApiClient) -> float:
    """Requests the API server has served so far on the operator's resources."""
    response = api.call_api("/metrics", "GET", auth_settings=["BearerToken"],
                            _preload_content=False)  # fmt: skip
    total = 0.0
    for line in response.data.decode().splitlines():
        found = re.match(r'apiserver_request_total\{.*\bresource="([^"]*)".*\} (\S+)$', line)
        if found and found[1] in OPERATOR_RESOURCES:
            total += float(found[2])
    return total


class WriteClock:
    """Samples the operator's write counter four times a second: when it last moved."""

    def __init__(self, operator: OperatorProcess) -> None:
        self.operator = operator
        self.last_change = time.monotonic()
        self._last = -1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:  # a busy operator may answer its metrics late: the next sample tells
                writes = self.operator.writes()
            except OSError:
                continue
            if writes != self._last:
                self._last, self.last_change = writes, time.monotonic()

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_change >= seconds

    def stop(self) -> None:
        self._stop.set()


def pass_times(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The policy passes between two samples of the operator's metrics: how many, their mean,
    how many took longer than 250 ms (from its histogram)."""
    name = "circuitgate_operator_reconcile_seconds"

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta(f"{name}_count")
    return {
        "passes": count,
        "pass_mean_ms": round(1000 * delta(f"{name}_sum") / count, 1) if count else 0.0,
        "passes_over_250ms": count - delta(f'{name}_bucket{{le="0.25"}}'),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(round(q * (len(ordered) - 1)), len(ordered) - 1)
    return ordered[index]


class ConditionWatch:
    """A watch on the namespace's pods from ``version`` on: when each pod's gate condition was
    first seen False. Raw JSON and no listing again: ten thousand pods deserialised into models
    take this process seconds of a core, which the operator beside it would lose."""

    def __init__(self, core: client.CoreV1Api, version: str) -> None:
        self.core = core
        self.version = version
        self.false_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # the stream broke (or the API server is going away): again
                time.sleep(0.1)

    def _follow(self) -> None:
        stream = watch.Watch()
        for event in stream.stream(
            self.core.list_namespaced_pod,
            NAMESPACE,
            timeout_seconds=30,
            resource_version=self.version,
            deserialize=False,
        ):
            pod = event["object"]
            if event["type"] == "ERROR":
                raise RuntimeError(f"the pod watch failed: {pod}")
            self.version = pod["metadata"]["resourceVersion"]
            for condition in pod.get("status", {}).get("conditions") or []:
                if condition["type"] == CONDITION_TYPE and condition["status"] == "False":
                    self.false_at.setdefault(pod["metadata"]["name"], time.time())
            if self._stop.is_set():
                stream.stop()
                return


def make_pods(
    core: client.CoreV1Api, fleets: list[FakeWorkers], count: int, nodes: int
) -> list[str]:
    hosts = [workers_host(i) for i in range(count)]
    for start in range(0, count, 200):
        fleets[start // FLEET_SIZE].add_many(hosts[start : min(start + 200, count)])

    def make(i: int) -> None:
        name = f"w{i:04d}"
        core.create_namespaced_pod(
            NAMESPACE,
            {
                "metadata": {"name": name, "labels": {"app": "worker"}},
                "spec": {
                    "nodeName": f"bench-node-{i % nodes}",
                    "readinessGates": [{"conditionType": CONDITION_TYPE}],
                    "containers": [
                        {
                            "name": "worker",
                            "image": "example.com/worker:1",
                            "ports": [
                                {"name": "breaker", "containerPort": fleets[i // FLEET_SIZE].port}
                            ],
                        }
                    ],
                },
            },
        )
        core.patch_namespaced_pod_status(
            name,
            NAMESPACE,
            {"status": {"phase": "Running", "podIP": hosts[i], "podIPs": [{"ip": hosts[i]}]}},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))
    return hosts


def workers_host(i: int) -> str:
    return f"127.{100 + i // 62500}.{(i // 250) % 250}.{i % 250 + 2}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--trips", type=int, default=40)
    parser.add_argument("--mode", choices=("stream", "longPoll", "poll"), default="stream")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="circuitgate-bench-"))
    plane = ControlPlane()
    plane.start()
    fleets: list[FakeWorkers] = []
    for n in range(-(-args.pods // FLEET_SIZE)):
        (workdir / f"fleet-{n}").mkdir()
        fleets.append(FakeWorkers(workdir / f"fleet-{n}").start())
    operator: OperatorProcess | None = None
    watcher: ConditionWatch | None = None
    try:
        install_crds(plane)
        api = plane.api_client()
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        for n in range(args.nodes):
            core.create_node({"metadata": {"name": f"bench-node-{n}"}})
        began = time.monotonic()
        hosts = make_pods(core, fleets, args.pods, args.nodes)
        print(f"{args.pods} pods on {args.nodes} nodes made in {time.monotonic() - began:.1f}s")
        custom.create_namespaced_custom_object(
            "circuitgate.io",
            "v1alpha1",
            NAMESPACE,
            "circuitpolicies",
            {
                "apiVersion": "circuitgate.io/v1alpha1",
                "kind": "CircuitPolicy",
                "metadata": {"name": "workers"},
                "spec": {
                    "selector": {"matchLabels": {"app": "worker"}},
                    "endpoint": {"port": "breaker"},
                    "watch": {"mode": args.mode},
                },
            },
        )
        operator = OperatorProcess(
            OperatorIdentity.admin(plane, (NAMESPACE,)),
            workdir,
            namespace=NAMESPACE,
            env={"CIRCUITGATE_RESYNC_SECONDS": "30"},
        )
        began = time.monotonic()
        operator.start()
        clock = WriteClock(operator)
        assert operator.process is not None
        pid = operator.process.pid

        def settled() -> bool:
            try:  # a busy operator may answer its metrics late: not settled yet
                samples = operator.metrics() if operator else {}
            except OSError:
                return False
            return samples.get('circuitgate_operator_circuits{state="closed"}') == args.pods

        eventually(settled, timeout=300, interval=0.5, what="every endpoint read")
        listed = core.list_namespaced_pod(NAMESPACE)
        eventually(
            lambda: all(
                any(c.type == CONDITION_TYPE for c in p.status.conditions or [])
                for p in core.list_namespaced_pod(NAMESPACE).items
            ),
            timeout=300,
            interval=0.5,
            what="every pod's condition",
        )
        eventually(lambda: clock.quiet_for(QUIET_SECONDS), timeout=900, what="no more writes")
        clock.stop()
        settle = clock.last_change - began
        print(f"operator settled {args.pods} pods in {settle:.1f}s (its last write of the start)")

        # Steady state: nothing changes; keep-alives (or long-polls) come and go.
        writes_before = operator.writes()
        listed = core.list_namespaced_pod(NAMESPACE)
        versions = {p.metadata.name: p.metadata.resource_version for p in listed.items}
        requests_before = api_requests(api)
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        time.sleep(args.steady_seconds)
        steady = time.monotonic() - wall_before
        cpu_share = (cpu_seconds(pid) - cpu_before) / steady
        requests_per_s = (api_requests(api) - requests_before) / steady
        writes = operator.writes() - writes_before
        writes_per_min = writes * 60.0 / args.steady_seconds
        listed = core.list_namespaced_pod(NAMESPACE)
        changed = sum(
            1 for p in listed.items if versions[p.metadata.name] != p.metadata.resource_version
        )
        print(
            f"steady {args.steady_seconds:.0f}s: {writes_per_min:.1f} API writes/min by the "
            f"operator, {changed} pods changed, {requests_per_s:.2f} API requests/s, "
            f"operator CPU {100 * cpu_share:.2f}% of one core"
        )

        # Trips, one at a time.
        passes_before = operator.metrics()
        watcher = ConditionWatch(core, listed.metadata.resource_version)
        watcher.start()
        time.sleep(2)
        latencies: list[float] = []
        tripped: list[int] = []
        for i in range(args.trips):
            index = (i * 37) % args.pods
            name, host = f"w{index:04d}", hosts[index]
            fleet = fleets[index // FLEET_SIZE]
            opened = fleet.trip(host, trips=1)
            deadline = time.monotonic() + 30
            while name not in watcher.false_at and time.monotonic() < deadline:
                time.sleep(0.005)
            if name not in watcher.false_at:
                raise SystemExit(f"{name} never turned False")
            latencies.append(watcher.false_at[name] - opened)
            tripped.append(index)
            if len(tripped) >= 10:  # stay well under the caps: close the oldest
                oldest = tripped.pop(0)
                fleets[oldest // FLEET_SIZE].close(hosts[oldest])
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        print(
            f"trip to condition False over {len(latencies)} trips: p50 {1000 * p50:.0f} ms, "
            f"p99 {1000 * p99:.0f} ms, max {1000 * max(latencies):.0f} ms"
        )
        passes = pass_times(passes_before, operator.metrics())
        print(
            f"policy passes while tripping: {passes['passes']:.0f}, mean "
            f"{passes['pass_mean_ms']:.0f} ms, {passes['passes_over_250ms']:.0f} over 250 ms"
        )
        rss = peak_rss_mib(pid)
        print(f"operator peak RSS {rss:.0f} MiB")
        result = {
            "pods": args.pods,
            "mode": args.mode,
            "settle_s": round(settle, 1),
            "trip_to_condition_p50_s": round(p50, 4),
            "trip_to_condition_p99_s": round(p99, 4),
            "steady_writes_per_min": round(writes_per_min, 2),
            "api_requests_per_s_steady": round(requests_per_s, 2),
            "cpu_share_steady": round(cpu_share, 4),
            "peak_rss_mib": round(rss, 1),
            **passes,
        }
        print(json.dumps(result))
    finally:
        if watcher is not None:
            watcher.stop()
        if operator is not None:
            operator.stop()
        for fleet in fleets:
            fleet.stop()
        plane.stop()


if __name__ == "__main__":
    main()
