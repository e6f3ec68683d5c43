"""The chart's ServiceAccount as the identity of the operator processes that tests start.

The chart is installed under a release of its own (never test_install.py's), with every RBAC
switch on: node remediation, eviction, peering and the webhook. An operator process then gets
the account's token (TokenRequest, as a pod would) and nothing else, so anything the chart
forgot to grant is refused by the real API server, shows in the operator's log, and fails the
test.

The account's permissions follow the operator's scope the way the chart's own Deployment does:
an operator started for some namespaces runs with ``watchNamespaces`` set to them (a Role in
each, plus the cluster-wide part, which then includes watching namespaces, as kopf does), one
for all namespaces with the ClusterRole alone. Each scope change is a ``helm upgrade``, the
same command a user runs, so only ever one scope's permissions are granted at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.helm import CHART
from circuitgate_devkit.cluster.service_accounts import service_account_kubeconfig
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.reconcile import TAKEOVER_HOLD_SECONDS

__all__ = ("ALL_RBAC", "PEERED", "TAKEOVER", "ChartAccount", "OperatorIdentity")

RELEASE = "circuitgate-operator-tests"
NAMESPACE = "circuitgate-operator-tests"
# The operator's default peering object name (`--peering`), which the scenarios use.
PEERING_NAME = "circuitgate"
# The options of operator replicas that peer through the object the release makes for the
# scope it serves (a KopfPeering in each namespace; its CRD is in the chart's crds/).
PEERED = ("--peering", PEERING_NAME, "--peering-lifetime", "4")
# How long such a replica may take to act after it starts or takes over: it first waits out
# the writes of the replica before it (`TAKEOVER_HOLD_SECONDS`), then lists and decides.
TAKEOVER = TAKEOVER_HOLD_SECONDS + 20
ALL_RBAC: dict[str, Any] = {
    "fullnameOverride": RELEASE,
    "nodeRemediation": {"enabled": True, "evictPods": True},
    "webhook": {"enabled": True},
    "peering": {"enabled": True, "name": PEERING_NAME},
}


@dataclass(frozen=True)
class OperatorIdentity:
    """What an operator process needs to run as the chart's ServiceAccount."""

    kubeconfig: Path  # the account's token, nothing else
    user: str  # system:serviceaccount:NAMESPACE:NAME
    webhook_name: str  # the one MutatingWebhookConfiguration the account may change
    namespaces: tuple[str, ...]  # what it is granted to serve; () for all
    webhook_secret: str = ""  # "namespace/name" of the webhook certificate's Secret, if any

    @classmethod
    def admin(
        cls,
        plane: ControlPlane,
        namespaces: tuple[str, ...] = (),
        webhook_name: str = "circuitgate",
    ) -> OperatorIdentity:
        """The control plane's admin, for the demo and the benchmark (the tests use the chart's)."""
        return cls(plane.kubeconfig, "circuitgate-admin", webhook_name, namespaces)


class ChartAccount:
    """The chart installed as release ``RELEASE`` in namespace ``NAMESPACE``."""

    def __init__(
        self,
        control_plane: ControlPlane,
        workdir: Path,
        *,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        values: dict[str, Any] | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.workdir = workdir
        self.release = release
        self.namespace = namespace
        self.values = dict(ALL_RBAC if values is None else values)
        self._scope: tuple[str, ...] | None = None
        self._identity: OperatorIdentity | None = None

    def install(self) -> ChartAccount:
        """``helm install`` (cluster-wide); the CRDs must exist: Helm installs the chart's
        crds/ only where missing (the kopf peering ones here) and never updates them."""
        self.control_plane.kubectl("create", "namespace", self.namespace)
        self.control_plane.helm(
            "install", self.release, str(CHART), "--namespace", self.namespace,
            "--values", str(self._values_file(())),
        )  # fmt: skip
        self._scope = ()
        manifest = self.control_plane.helm(
            "get", "manifest", self.release, "--namespace", self.namespace
        ).stdout
        account, webhook_name, webhook_secret = _account_and_webhook(manifest)
        kubeconfig = service_account_kubeconfig(
            self.control_plane, self.namespace, account, self.workdir / "kubeconfig", hours=6
        )
        self._identity = OperatorIdentity(
            kubeconfig=kubeconfig,
            user=f"system:serviceaccount:{self.namespace}:{account}",
            webhook_name=webhook_name,
            namespaces=(),
            webhook_secret=webhook_secret,
        )
        self._wait_granted(())
        return self

    @contextmanager
    def installed(self) -> Iterator[ChartAccount]:
        """``install()``, and ``uninstall()`` when the block ends, however it ends."""
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def serve(self, namespaces: Sequence[str]) -> OperatorIdentity:
        """Grant what the chart grants an operator serving these namespaces (none: all of
        them), by ``helm upgrade`` if the scope changes; return once the API server's
        authorizer agrees (RBAC changes reach it through a cache)."""
        if self._identity is None:
            raise RuntimeError("install() first")
        scope = tuple(sorted(set(namespaces)))
        if scope != self._scope:
            self.control_plane.helm(
                "upgrade", self.release, str(CHART), "--namespace", self.namespace,
                "--reset-values", "--values", str(self._values_file(scope)),
            )  # fmt: skip
            self._scope = scope
            self._wait_granted(scope)
        self._identity = dataclasses.replace(self._identity, namespaces=scope)
        return self._identity

    def uninstall(self) -> None:
        self.control_plane.helm(
            "uninstall", self.release, "--namespace", self.namespace, "--wait", check=False
        )
        self.control_plane.kubectl(
            "delete", "namespace", self.namespace, "--wait=false", check=False
        )

    def can_i(self, verb: str, resource: str, namespace: str | None) -> bool:
        where = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        result = self.control_plane.kubectl(
            "auth", "can-i", verb, resource, *where, f"--as={self.user}", check=False
        )
        return result.stdout.strip() == "yes"

    @property
    def user(self) -> str:
        if self._identity is None:
            raise RuntimeError("install() first")
        return self._identity.user

    def _values_file(self, scope: tuple[str, ...]) -> Path:
        path = self.workdir / "values.yaml"
        path.write_text(yaml.safe_dump({**self.values, "watchNamespaces": list(scope)}))
        return path

    def _wait_granted(self, scope: tuple[str, ...], timeout: float = 15.0) -> None:
        """Until a sample of what the chart grants for this scope is in force: each Role and
        binding, and the cluster-wide part."""
        checks: list[tuple[str, str, str | None]] = [
            ("list", "circuitpolicies.circuitgate.io", namespace) for namespace in scope
        ] or [("list", "circuitpolicies.circuitgate.io", None)]
        if scope:
            checks.append(("watch", "namespaces", None))
            if self.values.get("nodeRemediation", {}).get("enabled"):
                checks.append(("create", "events", "default"))  # events about nodes
        eventually(
            lambda: all(self.can_i(*check) for check in checks),
            timeout=timeout,
            interval=0.05,
            what=f"{self.user} granted {checks}",
        )


def _account_and_webhook(manifest: str) -> tuple[str, str, str]:
    """The ServiceAccount's name, the webhook configuration's name and its certificate's
    Secret, as the chart rendered them for the operator's Deployment."""
    (deployment,) = [
        doc for doc in yaml.safe_load_all(manifest) if doc and doc["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    return (
        pod["serviceAccountName"],
        env["CIRCUITGATE_WEBHOOK_NAME"],
        env.get("CIRCUITGATE_WEBHOOK_SECRET") or "",
    )
