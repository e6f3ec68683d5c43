"""Readiness-gate injection: a mutating admission webhook served by kopf, configured by us.

We manage the MutatingWebhookConfiguration ourselves rather than let kopf do it, because kopf's
managed configuration has no namespace selector: ours sends the API server's pod creations only
from namespaces that have a CircuitPolicy, and fails open (``failurePolicy: Ignore``), so a
stopped operator never blocks a pod. The handler itself is in `handlers`.

With several replicas (kopf peering) only the active one writes the configuration: it is
written when a policy event arrives (kopf delivers none to a paused replica) and checked for
drift every resync while this replica runs policy loops (kopf stops those on a pause). The
replicas serve one certificate, kept in a Secret, so the one CA in the configuration trusts
whichever replica the API server reaches. Only a standalone replica deletes the configuration
on exit: a peer's exit leaves it to the replica taking over, and ``helm uninstall`` removes it
through its owner, the release's ClusterRole.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kopf

from .act.api import ApiError, KubeApi
from .certificates import new_certificate, serves_host, write_certificate
from .config import OperatorConfig
from .model import PolicyView, parse_policy
from .names import GROUP, VERSION

if TYPE_CHECKING:
    from .lifecycle import Operator

__all__ = (
    "HANDLER_ID",
    "WebhookSetup",
    "client_config",
    "cluster_role_owner",
    "drifted",
    "shared_certificate",
    "webhook_configuration",
)

logger = logging.getLogger(__name__)

HANDLER_ID = "inject-readiness-gate"
_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# A namespace selector that matches no namespace, for when there is no policy at all.
_NO_NAMESPACE = "circuitgate.invalid"
# A shared certificate with less than this left is replaced, well before the API server
# would refuse it.
_RENEW_BEFORE = datetime.timedelta(days=30)
# Answers of the API server worth trying again (none, too many requests, its own failures).
_TRANSIENT = frozenset({0, 429, 500, 502, 503, 504})


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


def drifted(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Whether ``actual`` differs from ``desired`` in anything ``desired`` sets: what the API
    server adds itself (defaults, ``metadata.uid``) is no drift."""
    return _differs(desired["webhooks"], actual.get("webhooks")) or _differs(
        {key: desired["metadata"][key] for key in ("labels", "ownerReferences")
         if key in desired["metadata"]},
        actual.get("metadata") or {},
    )  # fmt: skip


def _differs(desired: Any, actual: Any) -> bool:
    if isinstance(desired, Mapping):
        return not isinstance(actual, Mapping) or any(
            _differs(value, actual.get(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            not isinstance(actual, list)
            or len(actual) != len(desired)
            or any(_differs(d, a) for d, a in zip(desired, actual, strict=True))
        )
    return bool(desired != actual)


async def _retrying(api: KubeApi, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One request, tried again (with a growing pause, about a minute in all) while the API
    server answers 429, 5xx or not at all: at start-up there is nothing better to do."""
    for attempt in range(8):
        try:
            return await api.request(method, path, **kwargs)
        except ApiError as error:
            if error.status not in _TRANSIENT or attempt == 7:
                raise
            await asyncio.sleep(min(0.5 * 2**attempt, 15.0))
    raise AssertionError("unreachable")


async def cluster_role_owner(api: KubeApi, name: str) -> dict[str, str]:
    """An owner reference to the release's ClusterRole: ``helm uninstall`` deletes it, and
    the garbage collector then deletes what it owns (the configuration, the certificate's
    Secret), even when the operator is gone or (as the release's RBAC goes first) no longer
    allowed to."""
    role = await _retrying(api, "GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
    return owned_by_cluster_role(role["metadata"]["name"], role["metadata"]["uid"])


async def shared_certificate(
    api: KubeApi, secret: str, host: str, *, owner: dict[str, str] | None = None
) -> dict[str, bytes]:
    """The replicas' one certificate, kept in the Secret ``secret`` ("namespace/name"), owned
    by ``owner`` if given.

    Made by whichever replica finds none (or one for another host, or near its expiry); the
    others load it. The create and the replace are conditional (a create fails if it exists,
    a replace if it changed since read): a replica that loses the race reads the winner's.
    """
    namespace, _, name = secret.partition("/")
    collection = f"/api/v1/namespaces/{namespace}/secrets"
    for _ in range(5):
        try:
            existing: dict[str, Any] | None = await _retrying(api, "GET", f"{collection}/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
            existing = None
        if existing is not None:
            data = existing.get("data") or {}
            pems = {key: base64.b64decode(value) for key, value in data.items()}
            if serves_host(pems, host, margin=_RENEW_BEFORE):
                return pems
        pems = new_certificate(host)
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "circuitgate"},
            **({"ownerReferences": [owner]} if owner is not None else {}),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": metadata,
            "data": {key: base64.b64encode(value).decode() for key, value in pems.items()},
        }
        try:
            if existing is None:
                await _retrying(api, "POST", collection, body=body)
            else:
                metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
                await _retrying(api, "PUT", f"{collection}/{name}", body=body)
        except ApiError as error:
            if error.status != 409:
                raise
            continue  # another replica got there first: read what it wrote
        return pems
    raise ApiError(409, f"the certificate Secret {secret} keeps changing under us")


class WebhookSetup:
    """The webhook server's certificate, and its configuration kept in step with policies."""

    def __init__(
        self,
        config: OperatorConfig,
        operator: Operator,
        pems: Mapping[str, bytes],
        *,
        standalone: bool,
        owner: dict[str, str] | None,
    ) -> None:
        self.config = config
        self.operator = operator
        self.standalone = standalone
        # A folder of our own when none is configured, removed on a graceful exit.
        self._own_directory = (
            None if config.webhook_cert_dir else tempfile.mkdtemp(prefix="circuitgate-webhook-")
        )
        directory = Path(config.webhook_cert_dir or self._own_directory or "")
        self.certfile, self.keyfile, self.cafile = write_certificate(directory, pems)
        self.url = f"https://{config.webhook_host}:{config.webhook_port}"
        self._namespaces: list[str] | None = None  # as last written
        self.owner = owner
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._keep_configured(), name="circuitgate webhook config")

    @classmethod
    async def start(
        cls, config: OperatorConfig, operator: Operator, *, standalone: bool
    ) -> WebhookSetup:
        """With the shared Secret's certificate if one is configured, else one of our own."""
        owner = (
            await cluster_role_owner(operator.api, config.webhook_owner)
            if config.webhook_owner
            else None
        )
        if config.webhook_secret:
            pems = await shared_certificate(
                operator.api, config.webhook_secret, config.webhook_host, owner=owner
            )
        else:
            pems = new_certificate(config.webhook_host)
        return cls(config, operator, pems, standalone=standalone, owner=owner)

    def server(self) -> kopf.WebhookServer:
        return kopf.WebhookServer(
            addr=self.config.webhook_listen,
            port=self.config.webhook_port,
            host=self.config.webhook_host,
            certfile=str(self.certfile),
            pkeyfile=str(self.keyfile),
            cafile=str(self.cafile),
        )

    async def policies(self, namespace: str) -> list[PolicyView]:
        """The namespace's policies as the API server has them now: any replica behind the
        Service may be asked, a paused one too, whose view kopf has frozen. The view's if the
        API server does not answer at once (the API server gives us 5 s in all)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/circuitpolicies"
        try:
            answer = await self.operator.api.request("GET", path, timeout=2.0)
        except ApiError as error:
            logger.warning("admission: could not list the policies of %s: %s", namespace, error)
            return list(self.operator.view.policies.in_namespace(namespace).values())
        return [parse_policy(item) for item in answer.get("items") or ()]

    def policies_changed(self) -> None:
        """A policy event: only the active replica gets them, so only it writes."""
        self._changed.set()

    async def _keep_configured(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.resync_seconds):
                    await self._changed.wait()
            except TimeoutError:
                if not self.operator.loops:
                    continue  # paused (kopf stopped our loops), or no policy to serve
                self._namespaces = None  # look at what is there: someone may have changed it
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

    async def _apply(self, namespaces: list[str]) -> None:
        """Create the configuration, or replace it if it is not what we want (no write if it
        is, so two replicas briefly both active never flap)."""
        body = webhook_configuration(
            self.config.webhook_name,
            self.url,
            self.cafile.read_bytes(),
            namespaces,
            owner=self.owner,
        )
        path = f"{_PATH}/{self.config.webhook_name}"
        try:
            existing = await self.operator.api.request("GET", path)
        except ApiError as error:
            if error.status != 404:
                raise
            await self.operator.api.request("POST", _PATH, body=body)
            return
        if not drifted(body, existing):
            return
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        await self.operator.api.request("PUT", path, body=body)

    async def remove(self) -> None:
        """On a graceful exit. A standalone replica deletes the configuration (after a crash,
        failurePolicy Ignore keeps pods flowing); a peer leaves it to the one taking over."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.standalone:
            try:
                await self.operator.api.request("DELETE", f"{_PATH}/{self.config.webhook_name}")
            except ApiError as error:
                # It fails open (failurePolicy Ignore), but it points at a stopped operator.
                if error.status != 404:
                    logger.warning("could not remove the webhook configuration: %s", error)
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)
