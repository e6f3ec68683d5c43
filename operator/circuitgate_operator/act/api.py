"""The one door to the Kubernetes API for our own reads and writes.

Why the synchronous ``kubernetes`` client in a small thread pool, not kopf's private aiohttp
client: the official client does the authentication (kubeconfig, in-cluster, exec plugins,
token refresh) that we would otherwise re-implement, and our calls are few, since every write
happens only on a change. The pool keeps each blocking call off kopf's event loop, and its own
size bounds how many requests we have in flight. Answers are raw JSON (no model objects), which
is both what the decide layer reads and far cheaper than the client's deserialisation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

__all__ = (
    "MERGE_PATCH",
    "METADATA_ONLY",
    "STRATEGIC_MERGE_PATCH",
    "ApiError",
    "KubeApi",
    "load_api_client",
)

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# A listing's items as metadata only (client-go's metadata informers): names and versions of
# ten thousand pods, not their bodies.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ApiError(Exception):
    """A request the API server refused (``status``) or that never got an answer (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def load_api_client(*, threads: int = 8) -> client.ApiClient:
    """An admin-less client from the in-cluster service account, else from KUBECONFIG."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = threads
    configuration.retries = False
    return client.ApiClient(configuration)


class KubeApi:
    """Raw JSON requests, each in the pool; ``on_write`` counts what we change."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        threads: int = 8,
        on_write: Callable[[str, str], None] | None = None,
    ) -> None:
        self.api_client = api_client
        self.on_write = on_write
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="circuitgate-api")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; return the JSON answer, or raise ApiError."""
        loop = asyncio.get_running_loop()
        headers = {"Content-Type": content_type, "Accept": accept}
        answer = await loop.run_in_executor(
            self._executor, self._send, method, path, body, headers, query, timeout
        )
        if method in _WRITES and self.on_write is not None:
            self.on_write(method, path)
        return answer

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        query: Mapping[str, str] | None,
        timeout: float,
    ) -> dict[str, Any]:
        try:
            response = self.api_client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except ApiException as error:
            raise ApiError(error.status or 0, _message(error)) from None
        except (HTTPError, OSError) as error:
            raise ApiError(0, f"no answer: {type(error).__name__}: {error}") from None
        data = response.data
        if not data:
            return {}
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)
