"""Cluster-side helpers for the operator's tests: the operator as a real process, and the
objects it watches (nodes, worker pods whose ``status.podIP`` is a real loopback endpoint,
policies) made through the real API server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from circuitgate_devkit.cluster.accounts import OperatorIdentity
from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.fake_endpoints import FakeWorkers
from circuitgate_devkit.cluster.service_accounts import refusals, refused_samples
from circuitgate_devkit.paths import REPO
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.names import CONDITION_TYPE

__all__ = ("Cluster", "OperatorProcess", "stop_operators")

T = TypeVar("T")
GROUP, VERSION = "circuitgate.io", "v1alpha1"


class OperatorProcess:
    """``python -m circuitgate_operator`` against the test control plane, in its own group,
    running as identity (the chart's ServiceAccount: see `circuitgate_devkit.cluster.accounts`)."""

    def __init__(
        self,
        identity: OperatorIdentity,
        workdir: Path,
        *args: str,
        namespace: str | None = None,
        standalone: bool = True,
        env: dict[str, str] | None = None,
        name: str = "operator",
    ) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.log = workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.argv = [
            sys.executable, "-m", "circuitgate_operator",
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
            *(["--namespace", namespace] if namespace else ["--all-namespaces"]),
            *(["--standalone"] if standalone else []),
            *args,
        ]  # fmt: skip
        self.identity = identity
        self.env = {
            **os.environ,
            "KUBECONFIG": str(identity.kubeconfig),
            # The webhook configuration the account may change (the chart's Deployment sets it).
            "CIRCUITGATE_WEBHOOK_NAME": identity.webhook_name,
            "CIRCUITGATE_WEBHOOK_SECRET": identity.webhook_secret,
            "CIRCUITGATE_RESYNC_SECONDS": "2",  # settle() waits two of these
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> OperatorProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            eventually(self.alive, timeout=30, what=f"operator liveness; log:\n{self.tail()}")
        return self

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"operator exited:\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by name{labels}."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    @property
    def webhook_port(self) -> int | None:
        """The port its webhook server listens on (``--webhook-port``), if given."""
        if "--webhook-port" not in self.argv:
            return None
        return int(self.argv[self.argv.index("--webhook-port") + 1])

    @property
    def webhook_name(self) -> str:
        """The MutatingWebhookConfiguration this operator keeps (with --webhook)."""
        return self.env["CIRCUITGATE_WEBHOOK_NAME"]

    def refusals(self) -> list[str]:
        """What the API server refused this operator, from its log, and from its metrics
        while it runs: empty when everything it did was allowed."""
        found = refusals(self.log.read_text(errors="replace")) if self.log.exists() else []
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                found += refused_samples(self.metrics())
        return found

    def reconciles(self, policy: str) -> float:
        """How many reconciliations of policy ("namespace/name") this operator has finished."""
        key = f'circuitgate_operator_reconciles_total{{policy="{policy}"}}'
        return self.metrics().get(key, 0.0)

    def settle(self, *policies: str, rounds: int = 2) -> None:
        """Wait until each policy ("namespace/name") has been reconciled ``rounds`` more times:
        whatever they would have done is done by then, so what has not happened will not.
        Two, since the first may have begun before the caller's change was visible."""
        start = {policy: self.reconciles(policy) for policy in policies}
        resync = float(self.env["CIRCUITGATE_RESYNC_SECONDS"])
        eventually(
            lambda: all(self.reconciles(p) >= n + rounds for p, n in start.items()),
            timeout=rounds * resync + 10,
            what=f"{rounds} more reconciliations of {', '.join(policies)}",
        )

    def writes(self) -> float:
        return sum(
            v
            for k, v in self.metrics().items()
            if k.startswith("circuitgate_operator_api_writes_total")
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_operators(processes: Iterable[OperatorProcess]) -> dict[str, list[str]]:
    """Stop each operator, printing the tail of its log (pytest shows it for a failed test),
    and return what the API server refused them, by log name, for those refused anything.
    The metrics can only be read while a process runs, so they are read before it stops."""
    refused: dict[str, list[str]] = {}
    for process in processes:
        found = process.refusals()
        process.stop()
        found = list(dict.fromkeys(found + process.refusals()))
        if found:
            refused[process.log.name] = found
        print(f"--- {process.log.name}\n{process.tail(40)}")
    return refused


class Cluster:
    """Objects of one test in its own namespace, made as cluster admin."""

    def __init__(self, control_plane: ControlPlane, namespace: str, workers: FakeWorkers) -> None:
        self.control_plane = control_plane
        self.namespace = namespace
        self.workers = workers
        self.api_client = control_plane.api_client()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.nodes: list[str] = []

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(node)
        self.api_client.close()

    # -- making objects ------------------------------------------------------------------------

    def node(self, name: str, *, labels: dict[str, str] | None = None, **spec: Any) -> str:
        """A Node named after the test's namespace (nodes are cluster-wide)."""
        full = f"{self.namespace}-{name}"
        self.core.create_node({"metadata": {"name": full, "labels": labels or {}}, "spec": spec})
        self.nodes.append(full)
        return full

    def worker_pod(
        self,
        name: str,
        *,
        node: str,
        labels: dict[str, str] | None = None,
        gated: bool = True,
        ready: bool = True,
        endpoint: tuple[str, int] | None = None,
    ) -> str:
        """A Pod on node whose podIP is a fresh loopback address serving the breaker
        document (or ``endpoint``'s host, a real worker's, on its port); returns that address."""
        host, port = endpoint or (self.workers.add(), self.workers.port)
        spec: dict[str, Any] = {
            "nodeName": node,
            "containers": [
                {
                    "name": "worker",
                    "image": "example.com/celery-worker:1",
                    "ports": [{"name": "breaker", "containerPort": port}],
                }
            ],
        }
        if gated:
            spec["readinessGates"] = [{"conditionType": CONDITION_TYPE}]
        self.core.create_namespaced_pod(
            self.namespace,
            {"metadata": {"name": name, "labels": labels or {"app": "worker"}}, "spec": spec},
        )
        status: dict[str, Any] = {"phase": "Running", "podIP": host, "podIPs": [{"ip": host}]}
        if ready:
            status["conditions"] = [{"type": "Ready", "status": "True"}]
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})
        return host

    def policy(self, name: str = "workers", **spec: Any) -> dict[str, Any]:
        body_spec: dict[str, Any] = {
            "selector": {"matchLabels": {"app": "worker"}},
            "endpoint": {"port": "breaker"},
            "watch": {"pollIntervalSeconds": 1, "timeoutSeconds": 1, "longPollSeconds": 10},
        }
        annotations = spec.pop("annotations", None)
        body_spec.update(spec)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CircuitPolicy",
            "metadata": {"name": name, **({"annotations": annotations} if annotations else {})},
            "spec": body_spec,
        }
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "circuitpolicies", body
        )
        return created

    def patch_policy(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "circuitpolicies", name, patch
        )

    def delete_policy(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "circuitpolicies", name
        )

    # -- reading objects -----------------------------------------------------------------------

    def pod(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self.api_client.sanitize_for_serialization(
            self.core.read_namespaced_pod(name, self.namespace)
        )
        return pod

    def condition(self, pod: str) -> dict[str, Any] | None:
        """The pod's circuitgate readiness-gate condition, if any."""
        conditions = self.pod(pod).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == CONDITION_TYPE), None)

    def condition_status(self, pod: str) -> str | None:
        condition = self.condition(pod)
        return condition["status"] if condition else None

    def circuit_state(self, name: str) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "circuitstates", name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return state

    def state_of(self, name: str) -> dict[str, Any]:
        """The status of the pod's CircuitState ({} while there is none)."""
        state = self.circuit_state(name)
        return dict((state or {}).get("status") or {})

    def circuit_states(self) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "circuitstates"
        )
        return list(listed["items"])

    def policy_object(self, name: str = "workers") -> dict[str, Any] | None:
        try:
            policy: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "circuitpolicies", name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return policy

    def policy_status(self, name: str = "workers") -> dict[str, Any]:
        policy = self.policy_object(name) or {}
        return dict(policy.get("status") or {})

    def policy_condition(self, type_: str, name: str = "workers") -> dict[str, Any] | None:
        conditions = self.policy_status(name).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def node_object(self, name: str) -> dict[str, Any]:
        node: dict[str, Any] = self.api_client.sanitize_for_serialization(self.core.read_node(name))
        return node

    def events(
        self, reason: str | None = None, *, name: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Events in the test's namespace (or another, e.g. "default" for nodes)."""
        listed = self.core.list_namespaced_event(namespace or self.namespace)
        events = self.api_client.sanitize_for_serialization(listed.items)
        return [
            e
            for e in events
            if (reason is None or e.get("reason") == reason)
            and (name is None or e["involvedObject"].get("name") == name)
        ]

    def node_events(self, node: str, reason: str | None = None) -> list[dict[str, Any]]:
        return self.events(reason, name=node, namespace="default")
