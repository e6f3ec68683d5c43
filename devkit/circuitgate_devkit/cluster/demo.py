"""The cluster half of ``make demo``: a worker trips, its pod turns unready, its node is cordoned,
then everything recovers, as ``kubectl`` shows it.

    python -m circuitgate_devkit.cluster.demo [--out demo-out] [--endpoint-port 9808]

Starts the tests' local control plane (etcd, kube-apiserver and kube-controller-manager built by
hack/build-control-plane.sh), a local SQS queue (moto server), three real ``celery worker``
processes whose breaker endpoints listen on loopback addresses of their own, and the operator
(``python -m circuitgate_operator``). There is no kubelet: the demo plays its part, reporting
the nodes Ready and each worker's Pod running at the address where the worker listens. Then one
worker's GPU breaks while tasks keep arriving, and ``kubectl get`` tells what happens.

Every step has a deadline: one that does not happen in time ends the demo with exit code 1,
saying which. The manifests and logs (operator, workers, execution log) stay in
``<out>/cluster/``. Whatever happens, Ctrl-C included, every process the demo started is
stopped before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml
from celery import Celery
from kubernetes import client

from circuitgate_devkit.cluster.accounts import OperatorIdentity
from circuitgate_devkit.cluster.control_plane import (
    ControlPlane,
    ControlPlaneUnavailable,
    pinned_versions,
)
from circuitgate_devkit.cluster.fixtures import install_crds
from circuitgate_devkit.cluster.objects import OperatorProcess
from circuitgate_devkit.lab.brokers import Broker, BrokerUnavailable, sqs_broker
from circuitgate_devkit.lab.workers import ExecutionLog, LabWorker
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.config import OperatorConfig
from circuitgate_operator.names import CONDITION_TYPE, GROUP, VERSION

__all__ = ("DemoFailed", "main")

T = TypeVar("T")

NAMESPACE = "demo"
POLICY = "inference"
GPU_LABEL = "nvidia.com/gpu.present"
NODES = ("gpu-node-1", "gpu-node-2", "gpu-node-3")  # one worker on each
PORT_NAME = "circuitgate"
WEBHOOK_NAME = OperatorConfig().webhook_name  # the operator's default; the demo runs no webhook

WORKER_CONF = {
    "circuitgate_fail_max": 2,
    "circuitgate_reset_timeout": 3,  # open 3 s after the first trip, then 6 s: trips come fast
    "circuitgate_max_reset_timeout": 6,
    "circuitgate_jitter": 0.0,
}
TRIP_THRESHOLD = 3
COOLDOWN_SECONDS = 15
TASK_SECONDS = 0.5  # a healthy worker's time per task; the broken one fails in 0.02 s
TASKS_PER_SECOND = 2.0  # half of what the two healthy workers can do

GATE = f'.status.conditions[?(@.type=="{CONDITION_TYPE}")]'
POD_COLUMNS = (
    ("NAME", ".metadata.name"),
    ("NODE", ".spec.nodeName"),
    ("IP", ".status.podIP"),
    ("CIRCUIT-CLOSED", f"{GATE}.status"),
    ("REASON", f"{GATE}.reason"),
    ("MESSAGE", f"{GATE}.message"),
)
NODE_COLUMNS = (
    ("NAME", ".metadata.name"),
    ("UNSCHEDULABLE", ".spec.unschedulable"),
    ("TAINTS", ".spec.taints[*].key"),
    ("CORDONED-BY", ".metadata.annotations.circuitgate\\.io/cordoned-by"),
)


class DemoFailed(RuntimeError):
    """A step of the story did not happen in time, or a part would not start."""


def shown_path(path: Path) -> str:
    """A path as a user would type it here: relative to the current folder when inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def wait_for(what: str, check: Callable[[], T], timeout: float) -> T:
    """Poll check until it is truthy; past the timeout the demo fails, saying what it waited for."""
    try:
        return eventually(check, timeout=timeout, interval=0.2, what=what)
    except AssertionError as error:
        raise DemoFailed(str(error)) from None


class Story:
    """Prints the demo as a user reads it: headings with the time, notes, and kubectl's output."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.began = time.monotonic()

    def heading(self, text: str) -> None:
        print(f"\n[{time.monotonic() - self.began:5.1f}s] {text}", flush=True)

    def note(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def block(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"    {line}".rstrip())
        sys.stdout.flush()

    def command(self, line: str) -> None:
        print(f"\n  $ {line}", flush=True)

    def kubectl(self, *args: str) -> None:
        """Run kubectl as cluster admin; print the command line (the kubeconfig is the one
        exported above) and what it printed."""
        self.command(shlex.join(("kubectl", *args)))
        result = self.plane.kubectl(*args, check=False)
        self.block(result.stdout + (result.stderr if result.returncode else ""))


class ClusterReader:
    """What the story waits for, read through the API (kubectl is for showing it)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.api_client = plane.api_client()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def circuit_states(self) -> dict[str, dict[str, Any]]:
        """Each CircuitState's status, by pod."""
        listed = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "circuitstates"
        )
        return {item["metadata"]["name"]: item.get("status") or {} for item in listed["items"]}

    def state(self, pod: str) -> str:
        return str(self.circuit_states().get(pod, {}).get("state", ""))

    def conditions(self) -> dict[str, str]:
        """Each pod's readiness-gate condition status ("" while it has none), by pod."""
        found = {}
        for pod in self.core.list_namespaced_pod(NAMESPACE).items:
            gate = [c for c in pod.status.conditions or () if c.type == CONDITION_TYPE]
            found[pod.metadata.name] = gate[0].status if gate else ""
        return found

    def unschedulable(self, node: str) -> bool:
        return bool(self.core.read_node(node).spec.unschedulable)


class Traffic:
    """Publishes ``lab.infer`` tasks at a steady rate from a thread of its own, until stopped."""

    def __init__(self, broker: Broker, rate: float) -> None:
        self.broker = broker
        self.interval = 1.0 / rate
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def healthy(self) -> bool:
        """True while publishing works; raises DemoFailed once it has failed."""
        if self.error is not None:
            raise DemoFailed(f"publishing tasks failed: {self.error!r}")
        return True

    def _run(self) -> None:
        producer = Celery("producer", set_as_current=False)
        producer.conf.update(self.broker.celery_config())
        try:
            while not self._stop.is_set():
                n = len(self.ids)
                result = producer.send_task("lab.infer", args=(n,), kwargs={"work_s": TASK_SECONDS})
                self.ids.append(result.id)
                self._stop.wait(self.interval)
        except Exception as error:
            self.error = error
        finally:
            producer.close()


class Demo:
    """The story, one method per step; every process it starts is stopped by ``stack``."""

    def __init__(self, out: Path, endpoint_port: int, stack: contextlib.ExitStack) -> None:
        self.workdir = out / "cluster"
        self.endpoint_port = endpoint_port
        self.stack = stack
        self.plane = ControlPlane()
        self.story = Story(self.plane)
        self.workers: list[LabWorker] = []

    def run(self) -> None:
        print("circuitgate on a local Kubernetes control plane")
        print("===============================================")
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        reader = self.start_control_plane()
        broker = self.start_workers(reader)
        self.start_operator(reader)
        traffic = Traffic(broker, TASKS_PER_SECOND)
        self.stack.callback(traffic.stop)
        self.break_a_worker(reader, traffic)
        self.repair_it(reader, traffic)
        traffic.stop()
        traffic.healthy()
        self.count_tasks(traffic.ids)

    # -- 1 -------------------------------------------------------------------------------------

    def start_control_plane(self) -> ClusterReader:
        story, plane = self.story, self.plane
        story.heading("1. A control plane, three GPU nodes and a CircuitPolicy")
        self.stack.callback(plane.stop)
        try:
            plane.start()
        except ControlPlaneUnavailable as error:
            raise DemoFailed(str(error)) from None
        story.note(
            f"etcd, kube-apiserver and kube-controller-manager {pinned_versions()['K8S_VERSION']}"
            f" on {plane.server}: ready in {plane.startup_seconds:.1f} s"
        )
        story.note(f"export KUBECONFIG={plane.kubeconfig}   # to look around while the demo runs")
        story.note(f"CRDs installed and Established: {', '.join(install_crds(plane))}")
        reader = ClusterReader(plane)
        self.stack.callback(reader.close)
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.kubectl("config", "set-context", "--current", f"--namespace={NAMESPACE}")
        story.note(f"namespace {NAMESPACE}, the kubeconfig's default from here on")

        nodes = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n, "labels": {GPU_LABEL: "true"}},
            }
            for n in NODES
        ]
        self.apply("nodes.yaml", nodes, show=0)
        for node in NODES:
            # What the kubelet and the node lifecycle controller would do: report the node Ready
            # and lift the not-ready taint every new node starts with.
            ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "no kubelet here: reported by the demo"}  # fmt: skip
            reader.core.patch_node_status(node, {"status": {"conditions": [ready]}})
        plane.kubectl("taint", "nodes", "--all", "node.kubernetes.io/not-ready:NoSchedule-")
        story.kubectl("get", "nodes", "-L", GPU_LABEL)
        self.apply("policy.yaml", [policy_manifest()])
        return reader

    def apply(self, name: str, manifests: list[dict[str, Any]], *, show: int = 1) -> None:
        """Write the manifests to a file in the work folder, print the first ``show`` of them
        and ``kubectl apply`` the file."""
        path = self.workdir / name
        path.write_text(to_yaml(manifests))
        if show:
            self.story.command(f"kubectl apply -f {shown_path(path)}")
            self.story.block(to_yaml(manifests[:show]))
            if len(manifests) > show:
                self.story.block(f"---\n# ... {len(manifests) - show} more like it")
        self.plane.kubectl("apply", "-f", str(path))

    # -- 2 -------------------------------------------------------------------------------------

    def start_workers(self, reader: ClusterReader) -> Broker:
        story = self.story
        story.heading("2. A local SQS queue and three celery workers, a Pod for each")
        broker = self.stack.enter_context(sqs_broker(visibility_timeout=60))
        story.note(f"moto SQS server on {broker.url.rpartition('@')[2]}")
        for index in range(len(NODES)):
            host = f"127.0.0.{11 + index}"
            check_address_free(host, self.endpoint_port)
            worker = LabWorker(
                f"inference-{index}",
                broker,
                self.workdir,
                conf=WORKER_CONF,
                endpoint_host=host,
                endpoint_port=self.endpoint_port,
            )
            self.workers.append(worker)
        self.stack.callback(stop_workers, self.workers)
        for worker in self.workers:
            worker.start(wait=False)
        for worker in self.workers:
            try:
                worker.wait_ready(timeout=60)
            except RuntimeError as error:
                raise DemoFailed(str(error)) from None
            story.note(f"celery worker {worker.name}: breaker endpoint {worker.endpoint}/circuit")
        story.note(
            f"circuitgate settings: fail_max {WORKER_CONF['circuitgate_fail_max']}, open "
            f"{WORKER_CONF['circuitgate_reset_timeout']} s after the first trip, then "
            f"{WORKER_CONF['circuitgate_max_reset_timeout']} s"
        )
        pods = [
            pod_manifest(worker, node) for worker, node in zip(self.workers, NODES, strict=True)
        ]
        self.apply("pods.yaml", pods)
        for worker in self.workers:
            # The kubelet's part: the pod runs, at the address where its worker listens.
            ip = worker.endpoint_host
            status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            reader.core.patch_namespaced_pod_status(worker.name, NAMESPACE, {"status": status})
        story.kubectl("get", "pods", "-o", "wide")
        story.note(
            "READY stays 0/1: no kubelet runs containers here. READINESS GATES counts the "
            "operator's condition: none yet."
        )
        return broker

    # -- 3 -------------------------------------------------------------------------------------

    def start_operator(self, reader: ClusterReader) -> None:
        story = self.story
        story.heading("3. The operator watches them")
        # With the admin kubeconfig; that the chart's RBAC grants it enough, the tests check.
        admin = OperatorIdentity.admin(self.plane, (NAMESPACE,), WEBHOOK_NAME)
        operator = OperatorProcess(admin, self.workdir, namespace=NAMESPACE)
        self.stack.callback(operator.stop)
        started = time.monotonic()
        try:
            operator.start()
        except AssertionError as error:
            raise DemoFailed(f"the operator did not start: {error}") from None
        story.note(f"python {' '.join(operator.argv[1:])}")
        story.note(
            f"live after {time.monotonic() - started:.1f} s; log: {shown_path(operator.log)}"
        )
        names = [worker.name for worker in self.workers]

        def all_closed() -> bool:
            states, conditions = reader.circuit_states(), reader.conditions()
            return all(
                states.get(n, {}).get("state") == "closed" and conditions.get(n) == "True"
                for n in names
            )

        wait_for("a closed CircuitState and a True condition for every pod", all_closed, 30)
        story.kubectl("get", "circuitstates")
        pod_columns = self.columns_file("pod-circuit.columns", POD_COLUMNS)
        self.columns_file("node.columns", NODE_COLUMNS)
        story.note(
            f"{shown_path(pod_columns)} shows the pods' {CONDITION_TYPE} condition "
            "(the readiness gate's) as columns"
        )
        self.show_pods()

    def columns_file(self, name: str, columns: Sequence[tuple[str, str]]) -> Path:
        """A kubectl custom-columns file: the headings, and under each its JSONPath."""
        widths = [max(len(heading), len(path)) for heading, path in columns]
        lines = (
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in zip(*columns, strict=True)
        )
        path = self.workdir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def show_pods(self) -> None:
        path = shown_path(self.workdir / "pod-circuit.columns")
        self.story.kubectl("get", "pods", "-o", f"custom-columns-file={path}")

    def show_nodes(self) -> None:
        self.story.kubectl("get", "nodes")
        path = shown_path(self.workdir / "node.columns")
        self.story.kubectl("get", "nodes", "-o", f"custom-columns-file={path}")

    # -- 4 -------------------------------------------------------------------------------------

    def break_a_worker(self, reader: ClusterReader, traffic: Traffic) -> None:
        story, broken, node = self.story, self.workers[0], NODES[0]
        story.heading(
            f"4. The GPU of {broken.name} breaks; tasks keep coming, {TASKS_PER_SECOND:g} a second"
        )
        broken.break_device()
        traffic.start()
        broke = time.monotonic()
        wait_for(
            f"the CircuitState of {broken.name} open",
            lambda: traffic.healthy() and reader.state(broken.name) == "open",
            timeout=30,
        )
        story.note(
            f"{broken.name} failed {WORKER_CONF['circuitgate_fail_max']} tasks in a row and "
            "handed them back: its circuit opened, it stopped fetching"
        )
        story.kubectl("get", "circuitstates")
        wait_for(
            f"the condition of pod {broken.name} False",
            lambda: reader.conditions().get(broken.name) == "False",
            timeout=15,
        )
        self.show_pods()
        wait_for(
            f"{node} cordoned",
            lambda: traffic.healthy() and reader.unschedulable(node),
            timeout=60,
        )
        trips = reader.circuit_states()[broken.name].get("trips")
        story.note(
            f"{trips} trips on {node} in {time.monotonic() - broke:.0f} s (tripThreshold "
            f"{TRIP_THRESHOLD}): the operator cordoned and tainted it"
        )
        self.show_nodes()
        story.kubectl("get", "circuitpolicies")
        story.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp")

    # -- 5 -------------------------------------------------------------------------------------

    def repair_it(self, reader: ClusterReader, traffic: Traffic) -> None:
        story, broken, node = self.story, self.workers[0], NODES[0]
        story.heading(f"5. The GPU of {broken.name} is repaired")
        broken.repair_device()
        repaired = time.monotonic()
        wait_for(
            f"the CircuitState of {broken.name} closed",
            lambda: traffic.healthy() and reader.state(broken.name) == "closed",
            timeout=30,
        )
        wait_for(
            f"the condition of pod {broken.name} True",
            lambda: reader.conditions().get(broken.name) == "True",
            timeout=15,
        )
        story.note(
            f"{time.monotonic() - repaired:.0f} s later its open period ended and the trial task "
            "succeeded: circuit closed, pod marked ready"
        )
        story.kubectl("get", "circuitstates")
        self.show_pods()
        wait_for(
            f"{node} uncordoned",
            lambda: traffic.healthy() and not reader.unschedulable(node),
            timeout=COOLDOWN_SECONDS + 30,
        )
        story.note(
            f"no trip for {COOLDOWN_SECONDS} s (cooldownSeconds): the operator uncordoned {node} "
            "and removed its taint"
        )
        self.show_nodes()
        story.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp")

    # -- the tasks -----------------------------------------------------------------------------

    def count_tasks(self, ids: Sequence[str]) -> None:
        log = ExecutionLog(self.workdir / "executions.jsonl")
        wanted = set(ids)
        self.story.heading("6. Every task")
        wait_for(
            f"all {len(wanted)} published tasks succeeded",
            lambda: wanted <= log.successes_per_task().keys(),
            timeout=60,
        )
        time.sleep(1.0)  # a duplicate would be a second success: give one the time to show
        counts = log.successes_per_task()
        failed = Counter(e.worker.split("@")[0] for e in log.read() if e.outcome == "failure")
        twice = sorted(i for i in wanted if counts[i] > 1)
        once = sum(1 for i in wanted if counts[i] == 1)
        self.story.note(
            f"{len(wanted)} tasks published, {once} succeeded exactly once, {len(twice)} more "
            f"than once, {len(wanted - counts.keys())} lost (from {shown_path(log.path)})"
        )
        self.story.note(
            "failed attempts, each handed back to the queue for another worker: "
            + (", ".join(f"{n} on {w}" for w, n in sorted(failed.items())) or "none")
        )
        if twice:
            raise DemoFailed(f"tasks that succeeded more than once: {', '.join(twice[:10])}")


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    return str(yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=None, width=95))


def policy_manifest() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CircuitPolicy",
        "metadata": {"name": POLICY, "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "inference"}},
            "endpoint": {"port": PORT_NAME},
            "watch": {"mode": "longPoll", "pollIntervalSeconds": 1, "timeoutSeconds": 2},
            "readiness": {"enabled": True},
            "nodeRemediation": {
                "enabled": True,
                "nodeSelector": {GPU_LABEL: "true"},
                "tripThreshold": TRIP_THRESHOLD,
                "minDistinctPods": 1,
                "windowSeconds": 60,
                "cooldownSeconds": COOLDOWN_SECONDS,
                "taint": {"key": "circuitgate.io/tripped", "value": "gpu", "effect": "NoSchedule"},
            },
            "safety": {"maxUnreadyPods": 1, "maxCordonedNodes": 1, "stormThreshold": 2},
        },
    }


def pod_manifest(worker: LabWorker, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": worker.name, "namespace": NAMESPACE, "labels": {"app": "inference"}},
        "spec": {
            "nodeName": node,
            "readinessGates": [{"conditionType": CONDITION_TYPE}],
            "containers": [
                {
                    "name": "worker",
                    "image": "example.com/inference-worker:1",
                    "ports": [{"name": PORT_NAME, "containerPort": worker.endpoint_port}],
                }
            ],
        },
    }


def check_address_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as error:
            raise DemoFailed(
                f"cannot listen on {host}:{port} ({error.strerror}): something else uses it; "
                "choose another port with --endpoint-port"
            ) from None


def stop_workers(workers: Sequence[LabWorker]) -> None:
    """Warm shutdown of all at once (each takes a few seconds), then SIGKILL whatever is left
    in their process groups."""
    with ThreadPoolExecutor(max_workers=max(len(workers), 1)) as pool:
        list(pool.map(lambda worker: worker.stop(timeout=20), workers))
    for worker in workers:
        worker.kill()


class Terminated(BaseException):
    """SIGTERM or SIGHUP: ends the demo the way Ctrl-C does, through the same clean-up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Raise Terminated on SIGTERM and SIGHUP, as Python raises KeyboardInterrupt on SIGINT."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While cleaning up: a second Ctrl-C must not cut the clean-up short."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m circuitgate_devkit.cluster.demo",
        description="circuitgate's operator on a local control plane: a worker trips, its pod "
        "turns unready, its node is cordoned, then everything recovers.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="manifests and logs go to OUT/cluster"
    )
    parser.add_argument(
        "--endpoint-port",
        type=int,
        default=9808,
        help="port of every worker's breaker endpoint, on 127.0.0.11-13 (default: 9808)",
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    began = time.monotonic()
    code = 0
    with signals_as_interrupt():
        stack = contextlib.ExitStack()
        try:
            Demo(out, args.endpoint_port, stack).run()
        except (DemoFailed, BrokerUnavailable) as error:
            print(f"\ndemo failed: {error}\nlogs: {shown_path(out / 'cluster')}", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            code = 128 + signal.SIGINT
        except Terminated as signalled:
            print(f"\nstopped by {signalled}", file=sys.stderr)
            code = 128 + signalled.signum
        finally:
            with signals_ignored():
                print("\nstopping the operator, the workers, SQS and the control plane", flush=True)
                stack.close()
    print(f"done in {time.monotonic() - began:.0f} s" + (f", exit code {code}" if code else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
