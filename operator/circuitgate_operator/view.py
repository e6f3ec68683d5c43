"""The operator's in-memory view of the cluster, fed by kopf's watch events and by the answers
to our own writes, with wake-ups for whoever decides on a namespace.

An object is replaced only by a newer resourceVersion, so a late watch event never undoes what
the answer to our own write already showed (which would make us write the same thing twice).
A complete listing of our own (`replace`, or page by page `observe_listed` then
`forget_unlisted`; by name only, just the latter) also makes the view forget what the cluster
no longer holds: kopf's resumed watch re-lists without reporting the deletions it missed. A
deletion the watch reported is remembered for a while, so a listing made before it and
answered after it does not bring the object back.
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
        shape: Callable[[V], object] | None = None,
    ) -> None:
        self._parse = parse
        self._clock = clock
        # What some decisions depend on, of all a view holds: ``reshaped`` counts only the
        # changes of that (objects added or gone included).
        self._shape = shape
        self._reshaped: dict[str, int] = {}
        self._items: dict[str, dict[str, tuple[str, V]]] = {}
        # Per namespace: a count of its changes, and its views as of one count (a pass over
        # ten thousand pods should not copy them when nothing changed).
        self._generations: dict[str, int] = {}
        self._copies: dict[str, tuple[int, dict[str, V]]] = {}
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
            return self._drop(namespace, name)
        known = items.get(name)
        if known is None and ours:
            return False
        if known is not None and not is_newer(version, known[0]):
            return False
        view = self._parse(body)
        items[name] = (version, view)
        self._changed(namespace, known is None or self._reshapes(known[1], view))
        self._tombstones.pop((namespace, name), None)  # created again since
        return True

    def _reshapes(self, old: V, new: V) -> bool:
        return self._shape is None or self._shape(old) != self._shape(new)

    def _changed(self, namespace: str, reshaped: bool = True) -> None:
        self._generations[namespace] = self._generations.get(namespace, 0) + 1
        if reshaped:
            self._reshaped[namespace] = self._reshaped.get(namespace, 0) + 1

    def _drop(self, namespace: str, name: str) -> bool:
        if self._items.get(namespace, {}).pop(name, None) is None:
            return False
        self._changed(namespace)
        return True

    def generation(self, namespace: str) -> int:
        """A number that changes whenever anything of the namespace does."""
        return self._generations.get(namespace, 0)

    def shape_generation(self, namespace: str) -> int:
        """A number that changes whenever the shape of anything of the namespace does (every
        change, for a store given no ``shape``)."""
        return self._reshaped.get(namespace, 0)

    def replace(self, namespace: str, bodies: Iterable[Mapping[str, Any]], version: str) -> bool:
        """Take in a complete listing of a namespace made at resourceVersion ``version``: what it
        holds is observed, and what it lacks is forgotten unless seen after the listing was made
        (an object created since). Return whether anything changed."""
        listed: set[str] = set()
        changed = self.observe_listed(namespace, bodies, listed)
        return self.forget_unlisted(namespace, listed, version) or changed

    def observe_listed(
        self, namespace: str, bodies: Iterable[Mapping[str, Any]], listed: set[str]
    ) -> bool:
        """Take in one page of a listing of a namespace, adding its names to ``listed``; the
        listing ends with `forget_unlisted`. Page by page, only one page's raw bodies are ever
        held (ten thousand pods are hundreds of megabytes as dicts). Return whether anything
        changed."""
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
        return changed

    def forget_unlisted(self, namespace: str, listed: set[str], version: str) -> bool:
        """End a listing made at resourceVersion ``version``: forget what it did not list
        unless seen after it was made (an object created since)."""
        changed = False
        items = self._items.get(namespace, {})
        for name, (seen, _) in list(items.items()):
            if name not in listed and not _later(seen, version):
                changed |= self._drop(namespace, name)
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
        self._drop(namespace, name)

    def get(self, namespace: str, name: str) -> V | None:
        item = self._items.get(namespace, {}).get(name)
        return item[1] if item is not None else None

    def in_namespace(self, namespace: str) -> Mapping[str, V]:
        """The namespace's views by name, as of now (the same object until something of the
        namespace changes: read it, never change it)."""
        generation = self.generation(namespace)
        copy = self._copies.get(namespace)
        if copy is None or copy[0] != generation:
            views = {name: view for name, (_, view) in self._items.get(namespace, {}).items()}
            copy = self._copies[namespace] = (generation, views)
        return copy[1]

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
        self.pods: ObjectStore[PodView] = ObjectStore(parse_pod, shape=PodView.placement)
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

    def nodes_by_name(self) -> Mapping[str, NodeView]:
        return self.nodes.in_namespace("")
