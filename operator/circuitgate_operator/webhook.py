"""Readiness-gate injection: a mutating admission webhook served by kopf, configured by us.

We manage the MutatingWebhookConfiguration ourselves rather than let kopf do it, because kopf's
managed configuration has no namespace selector: ours sends the API server's pod creations only
from namespaces that have a CircuitPolicy, and fails open (``failurePolicy: Ignore``), so a
stopped operator never blocks a pod. The handler itself is in `handlers`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kopf

from .act.api import ApiError
from .certificates import make_certificate
from .config import OperatorConfig

if TYPE_CHECKING:
    from .lifecycle import Operator

__all__ = ("HANDLER_ID", "WebhookSetup", "client_config", "webhook_configuration")

logger = logging.getLogger(__name__)

HANDLER_ID = "inject-readiness-gate"
_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# A namespace selector that matches no namespace, for when there is no policy at all.
_NO_NAMESPACE = "circuitgate.invalid"


def client_config(url: str, ca_bundle: bytes) -> dict[str, Any]:
    """How the API server calls us: a Service reference for an in-cluster ``NAME.NS.svc`` host
    (API servers often cannot resolve cluster DNS names), a plain URL otherwise."""
    bundle = base64.b64encode(ca_bundle).decode()
    parsed = urllib.parse.urlsplit(url)
    parts = (parsed.hostname or "").split(".")
    if len(parts) == 3 and parts[2] == "svc":
        service = {
            "name": parts[0],
            "namespace": parts[1],
            "port": parsed.port or 443,
            "path": f"/{HANDLER_ID}",
        }
        return {"service": service, "caBundle": bundle}
    return {"url": f"{url.rstrip('/')}/{HANDLER_ID}", "caBundle": bundle}


def owned_by_cluster_role(name: str, uid: str) -> dict[str, str]:
    """An owner reference to a ClusterRole: a cluster-scoped object may only be owned by one."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": name,
            "uid": uid}  # fmt: skip


def webhook_configuration(
    name: str,
    url: str,
    ca_bundle: bytes,
    namespaces: list[str],
    owner: dict[str, str] | None = None,
) -> dict[str, Any]:
    values = sorted(namespaces) or [_NO_NAMESPACE]
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "circuitgate"},
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            {
                "name": f"readiness-gate.{name}.circuitgate.io",
                "clientConfig": client_config(url, ca_bundle),
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "operations": ["CREATE"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": values,
                        }
                    ]
                },
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": 5,
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "Never",
            }
        ],
    }


class WebhookSetup:
    """The webhook server's certificate, and its configuration kept in step with policies."""

    def __init__(self, config: OperatorConfig, operator: Operator) -> None:
        self.config = config
        self.operator = operator
        # A folder of our own when none is configured, removed on a graceful exit.
        self._own_directory = (
            None if config.webhook_cert_dir else tempfile.mkdtemp(prefix="circuitgate-webhook-")
        )
        directory = Path(config.webhook_cert_dir or self._own_directory or "")
        self.certfile, self.keyfile, self.cafile = make_certificate(directory, config.webhook_host)
        self.url = f"https://{config.webhook_host}:{config.webhook_port}"
        self._namespaces: list[str] | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._keep_configured(), name="circuitgate webhook config")

    def server(self) -> kopf.WebhookServer:
        return kopf.WebhookServer(
            addr=self.config.webhook_listen,
            port=self.config.webhook_port,
            host=self.config.webhook_host,
            certfile=str(self.certfile),
            pkeyfile=str(self.keyfile),
            cafile=str(self.cafile),
        )

    def policies_changed(self) -> None:
        self._changed.set()

    async def _keep_configured(self) -> None:
        self._changed.set()
        while True:
            await self._changed.wait()
            await asyncio.sleep(0.05)
            self._changed.clear()
            namespaces = sorted(
                {p.namespace for p in self.operator.view.policies if not p.deleting}
            )
            if namespaces == self._namespaces:
                continue
            try:
                await self._apply(namespaces)
                self._namespaces = namespaces
            except ApiError as error:
                logger.warning("could not configure the webhook: %s", error)
                await asyncio.sleep(2)
                self._changed.set()

    async def _owner(self) -> dict[str, str] | None:
        """The release's ClusterRole as owner: ``helm uninstall`` deletes it, and the garbage
        collector then deletes the configuration, even when this process is gone or (as the
        release's RBAC goes first) no longer allowed to."""
        if not self.config.webhook_owner:
            return None
        role = await self.operator.api.request(
            "GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{self.config.webhook_owner}"
        )
        return owned_by_cluster_role(role["metadata"]["name"], role["metadata"]["uid"])

    async def _apply(self, namespaces: list[str]) -> None:
        body = webhook_configuration(
            self.config.webhook_name,
            self.url,
            self.cafile.read_bytes(),
            namespaces,
            owner=await self._owner(),
        )
        path = f"{_PATH}/{self.config.webhook_name}"
        try:
            existing = await self.operator.api.request("GET", path)
        except ApiError as error:
            if error.status != 404:
                raise
            await self.operator.api.request("POST", _PATH, body=body)
            return
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        await self.operator.api.request("PUT", path, body=body)

    async def remove(self) -> None:
        """On a graceful exit; after a crash, failurePolicy Ignore keeps pods flowing."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            await self.operator.api.request("DELETE", f"{_PATH}/{self.config.webhook_name}")
        except ApiError as error:
            # It fails open (failurePolicy Ignore), but it points at a stopped operator.
            if error.status != 404:
                logger.warning("could not remove the webhook configuration: %s", error)
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)
