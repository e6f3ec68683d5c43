"""The operator's in-memory view of the cluster, fed by kopf's watch events and by the answers
to our own writes, with wake-ups for whoever decides on a namespace.

An object is replaced only by a newer resourceVersion, so a late watch event never undoes what
the answer to our own write already showed (which would make us write the same thing twice).
A complete listing of our own (`replace`) also makes the view forget what the cluster no longer
holds: kopf's resumed watch re-lists without reporting the deletions it missed. A deletion the
watch reported is remembered for a while, so a listing made before it and answered after it
does not bring the object back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from .model import (
    CircuitStateView,
    NodeView,
    PodView,
    PolicyView,
    parse_circuit_state,
    parse_node,
    parse_pod,
    parse_policy,
)

__all__ = ("TOMBSTONE_SECONDS", "ClusterView", "ObjectStore", "is_newer")

V = TypeVar("V")

# How long a deletion outweighs listings: far longer than a listing is ever in flight.
TOMBSTONE_SECONDS = 600.0


def is_newer(new: str, old: str) -> bool:
    """Whether resourceVersion new is at least old. They are opaque, but etcd's are integers;
    anything else counts as newer, so the watch always wins in doubt."""
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


def _later(seen: str, version: str) -> bool:
    """Whether resourceVersion seen is strictly after version (False when not comparable: the
    listing is the authority then, and the watch brings back whatever it missed)."""
    return seen.isdigit() and version.isdigit() and int(seen) > int(version)


class ObjectStore(Generic[V]):
    """Views by namespace and name (cluster-scoped objects under namespace "")."""

    def __init__(
        self,
        parse: Callable[[Mapping[str, Any]], V],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._parse = parse
        self._clock = clock
        self._items: dict[str, dict[str, tuple[str, V]]] = {}
        # (namespace, name) -> (resourceVersion at deletion, when the watch reported it)
        self._tombstones: dict[tuple[str, str], tuple[str, float]] = {}

    def observe(
        self, body: Mapping[str, Any], *, deleted: bool = False, ours: bool = False
    ) -> bool:
        """Take in a body from a watch event (or, ``ours``, from the answer to our write, which
        only updates an object still known). Return whether anything changed."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        version = str(meta.get("resourceVersion") or "")
        items = self._items.setdefault(namespace, {})
        if deleted:
            self._bury(namespace, name, version)
            return items.pop(name, None) is not None
        known = items.get(name)
        if known is None and ours:
            return False
        if known is not None and not is_newer(version, known[0]):
            return False
        items[name] = (version, self._parse(body))
        self._tombstones.pop((namespace, name), None)  # created again since
        return True

    def replace(self, namespace: str, bodies: Iterable[Mapping[str, Any]], version: str) -> bool:
        """Take in a complete listing of a namespace made at resourceVersion ``version``: what it
        holds is observed, and what it lacks is forgotten unless seen after the listing was made
        (an object created since). Return whether anything changed."""
        listed: set[str] = set()
        changed = False
        self._forget_old_tombstones()
        for body in bodies:
            meta = body.get("metadata") or {}
            name = meta.get("name") or ""
            tombstone = self._tombstones.get((namespace, name))
            if tombstone is not None and not _later(
                str(meta.get("resourceVersion") or ""), tombstone[0]
            ):
                continue  # deleted since the listing was made
            listed.add(name)
            changed |= self.observe(body)
        items = self._items.get(namespace, {})
        for name, (seen, _) in list(items.items()):
            if name not in listed and not _later(seen, version):
                del items[name]
                changed = True
        return changed

    def _bury(self, namespace: str, name: str, version: str) -> None:
        self._forget_old_tombstones()
        # Popped first so the dict stays in burial order, oldest first.
        self._tombstones.pop((namespace, name), None)
        self._tombstones[(namespace, name)] = (version, self._clock())

    def _forget_old_tombstones(self) -> None:
        """Drop the tombstones older than TOMBSTONE_SECONDS: the first ones, as they are kept
        in burial order, so a deletion costs nothing more than the tombstones it drops."""
        oldest = self._clock() - TOMBSTONE_SECONDS
        while self._tombstones:
            key, (_, buried) = next(iter(self._tombstones.items()))
            if buried >= oldest:
                break
            del self._tombstones[key]

    def forget(self, namespace: str, name: str) -> None:
        self._items.get(namespace, {}).pop(name, None)

    def get(self, namespace: str, name: str) -> V | None:
        item = self._items.get(namespace, {}).get(name)
        return item[1] if item is not None else None

    def in_namespace(self, namespace: str) -> dict[str, V]:
        return {name: view for name, (_, view) in self._items.get(namespace, {}).items()}

    def __iter__(self) -> Iterator[V]:
        for items in list(self._items.values()):
            for _, view in list(items.values()):
                yield view

    def __len__(self) -> int:
        return sum(len(items) for items in self._items.values())


class ClusterView:
    """Policies, pods, nodes and CircuitStates as last seen, and who to wake when they change."""

    def __init__(self) -> None:
        self.policies: ObjectStore[PolicyView] = ObjectStore(parse_policy)
        self.pods: ObjectStore[PodView] = ObjectStore(parse_pod)
        self.nodes: ObjectStore[NodeView] = ObjectStore(parse_node)
        self.circuit_states: ObjectStore[CircuitStateView] = ObjectStore(parse_circuit_state)
        self._listeners: dict[str, set[asyncio.Event]] = {}

    def listen(self, namespace: str, event: asyncio.Event) -> None:
        self._listeners.setdefault(namespace, set()).add(event)

    def unlisten(self, namespace: str, event: asyncio.Event) -> None:
        self._listeners.get(namespace, set()).discard(event)

    def notify(self, namespace: str | None) -> None:
        """Wake the listeners of a namespace, or of all namespaces for None (a node)."""
        groups = (
            self._listeners.values()
            if namespace is None
            else [self._listeners.get(namespace, set())]
        )
        for group in groups:
            for event in group:
                event.set()

    def nodes_by_name(self) -> dict[str, NodeView]:
        return self.nodes.in_namespace("")
