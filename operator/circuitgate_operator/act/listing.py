"""Complete listings of our own, before a policy decides anything and now and then after.

kopf delivers each resource's listing object by object, through per-object workers, and never
says when one is over, nor what a resumed watch no longer lists: a decision made on that view
may miss pods already unready (and overshoot a cap) or act on a policy deleted long ago. So a
policy loop first lists, page by page, everything its decisions depend on, and replaces the
view's contents with it; loops of one namespace share a listing made after they asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..names import GROUP, VERSION
from ..view import ClusterView, ObjectStore
from .api import METADATA_ONLY, ApiError, KubeApi
from .requests import circuit_states_path

__all__ = ("PAGE_SIZE", "READ_ATTEMPTS", "Lister", "Scope", "node_scopes", "policy_scopes")

PAGE_SIZE = 500
READ_ATTEMPTS = 4
"""Tries per page when the API server is briefly unwilling (429, 5xx, no answer), as
client-go's reads retry: a listing needs several pages, and failing the whole listing on one
refusal would hold a restarted operator's first decisions for the loop's growing backoff."""
_TRANSIENT = frozenset({0, 429, 500, 502, 503, 504})
_FIRST_RETRY_SECONDS = 0.25


@dataclass(frozen=True)
class Scope:
    """One listing: a store of the view, the namespace it fills ("" for nodes), the path."""

    store: str
    namespace: str
    path: str


def policy_scopes(namespace: str) -> tuple[Scope, ...]:
    """What one policy's decisions depend on: its namespace's policies (overlaps), pods and
    CircuitStates, and the nodes (cordons are counted across the cluster)."""
    return (
        Scope(
            "policies",
            namespace,
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/circuitpolicies",
        ),
        Scope("pods", namespace, f"/api/v1/namespaces/{namespace}/pods"),
        Scope("circuit_states", namespace, circuit_states_path(namespace)),
        *node_scopes(),
    )


def node_scopes() -> tuple[Scope, ...]:
    """The nodes: cordons are counted, and undone, across the cluster."""
    return (Scope("nodes", "", "/api/v1/nodes"),)


class Lister:
    """Lists scopes into the view, one listing of a scope at a time."""

    def __init__(self, api: KubeApi, view: ClusterView) -> None:
        self.api = api
        self.view = view
        self._listed_at: dict[Scope, float] = {}  # completely, bodies and all
        self._named_at: dict[Scope, float] = {}  # by name: enough to forget what is gone
        self._locks: dict[Scope, asyncio.Lock] = {}

    async def ensure(self, scopes: Iterable[Scope], *, since: float) -> bool:
        """Have each scope listed completely at or after ``since`` (raises ApiError if a
        listing fails); return whether the view changed."""
        return await self._ensure(scopes, since, names_only=False)

    async def forget_gone(self, scopes: Iterable[Scope], *, since: float) -> bool:
        """Have each scope listed at least by name at or after ``since``, and forget what it no
        longer holds (kopf's watches bring what is new; a resumed one misses deletions):
        metadata only, so a few megabytes of ten thousand pods rather than hundreds."""
        return await self._ensure(scopes, since, names_only=True)

    async def _ensure(self, scopes: Iterable[Scope], since: float, *, names_only: bool) -> bool:
        changed = False
        for scope in scopes:
            async with self._locks.setdefault(scope, asyncio.Lock()):
                listed_at = self._listed_at.get(scope, -1.0)
                if names_only:
                    listed_at = max(listed_at, self._named_at.get(scope, -1.0))
                if listed_at >= since:
                    continue
                started = time.time()
                changed |= await self._list(scope, names_only=names_only)
                (self._named_at if names_only else self._listed_at)[scope] = started
        return changed

    async def _list(self, scope: Scope, *, names_only: bool) -> bool:
        """List a scope page by page into its store, one page's bodies held at a time."""
        store: ObjectStore[Any] = getattr(self.view, scope.store)
        accept = METADATA_ONLY if names_only else "application/json"
        listed: set[str] = set()
        changed = False
        query: dict[str, str] = {"limit": str(PAGE_SIZE)}
        while True:
            try:
                answer = await self._get(scope.path, query, accept)
            except ApiError:
                if changed:  # the pages taken in are news all the same
                    self.view.notify(None)
                raise
            items = answer.get("items") or ()
            if names_only:
                listed.update((item.get("metadata") or {}).get("name") or "" for item in items)
            else:
                changed |= store.observe_listed(scope.namespace, items, listed)
            meta = answer.get("metadata") or {}
            if not meta.get("continue"):
                break
            query = {"limit": str(PAGE_SIZE), "continue": meta["continue"]}
        version = str(meta.get("resourceVersion") or "")
        return store.forget_unlisted(scope.namespace, listed, version) or changed

    async def _get(self, path: str, query: dict[str, str], accept: str) -> dict[str, Any]:
        """One page; a transient refusal is tried again after 0.25, 0.5 and 1 s (a 429's
        Retry-After of 1 s included), anything else raises at once."""
        delay = _FIRST_RETRY_SECONDS
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return await self.api.request("GET", path, query=query, accept=accept)
            except ApiError as error:
                if error.status not in _TRANSIENT:
                    raise
            await asyncio.sleep(delay)
            delay *= 2
        return await self.api.request("GET", path, query=query, accept=accept)
