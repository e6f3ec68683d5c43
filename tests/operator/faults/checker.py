"""The safety promises, checked continuously from the API server while faults happen: a
thread polling the test's pods, nodes and policy through a client of its own (the admin's,
straight to the API server, never through the fault proxy)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from kubernetes import client

from circuitgate_devkit.cluster.objects import GROUP, VERSION, Cluster
from circuitgate_operator.names import CONDITION_TYPE

__all__ = ("InvariantChecker",)


@dataclass
class InvariantChecker:
    """Every ``interval``: unready pods (our condition False) at most ``max_unready``;
    unschedulable nodes of the test at most ``max_cordoned`` (no admin cordons in these
    tests); while the policy says SharedOutageSuspected, no pod unready that was not when it
    began saying so. ``violations`` lists what broke, with when."""

    cluster: Cluster
    policy: str
    max_unready: int
    max_cordoned: int
    interval: float = 0.1
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    most_unready: int = 0
    most_cordoned: int = 0
    storms: int = 0
    _storm_base: frozenset[str] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> InvariantChecker:
        self._thread = threading.Thread(target=self._run, name="invariants", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        api_client = self.cluster.control_plane.api_client()
        core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        try:
            while not self._stop.wait(self.interval):
                self._sample(core, custom)
        finally:
            api_client.close()

    def _sample(self, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
        namespace = self.cluster.namespace
        pods = core.list_namespaced_pod(namespace).items
        unready = sorted(
            pod.metadata.name
            for pod in pods
            if any(
                c.type == CONDITION_TYPE and c.status == "False"
                for c in (pod.status.conditions or [])
            )
        )
        nodes = [core.read_node(name) for name in self.cluster.nodes]
        cordoned = sorted(n.metadata.name for n in nodes if n.spec.unschedulable)
        policy = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "circuitpolicies", self.policy
        )
        conditions = (policy.get("status") or {}).get("conditions") or []
        storm = any(
            c["type"] == "SharedOutageSuspected" and c["status"] == "True" for c in conditions
        )
        now = time.strftime("%H:%M:%S")
        self.samples += 1
        self.most_unready = max(self.most_unready, len(unready))
        self.most_cordoned = max(self.most_cordoned, len(cordoned))
        if len(unready) > self.max_unready:
            self.violations.append(f"{now} unready {unready} > {self.max_unready}")
        if len(cordoned) > self.max_cordoned:
            self.violations.append(f"{now} cordoned {cordoned} > {self.max_cordoned}")
        if storm and self._storm_base is None:
            self._storm_base, self.storms = frozenset(unready), self.storms + 1
        elif storm and self._storm_base is not None and set(unready) - self._storm_base:
            self.violations.append(f"{now} {unready} unready during a storm")
        elif not storm:
            self._storm_base = None
