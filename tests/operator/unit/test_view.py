"""The in-memory view: a late watch event never undoes what our own write's answer showed."""

from __future__ import annotations

import asyncio

from circuitgate_operator.model import parse_pod
from circuitgate_operator.view import TOMBSTONE_SECONDS, ClusterView, ObjectStore, is_newer


def pod(name: str, version: str, ip: str = "") -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"u-{name}",
            "resourceVersion": version,
        },
        "status": {"podIP": ip},
    }


def test_older_versions_never_replace_newer_ones() -> None:
    view = ClusterView()
    assert view.pods.observe(pod("a", "10", "10.0.0.1"))
    assert view.pods.observe(pod("a", "12", "10.0.0.2"), ours=True)  # our write's answer
    assert not view.pods.observe(pod("a", "11", "10.0.0.9"))  # the watch, catching up
    found = view.pods.get("ns", "a")
    assert found is not None and found.pod_ip == "10.0.0.2"
    assert is_newer("abc", "12")  # not etcd's integers: the newest word wins


def test_an_answer_never_brings_back_a_deleted_object() -> None:
    view = ClusterView()
    view.pods.observe(pod("a", "10"))
    view.pods.observe(pod("a", "11"), deleted=True)
    assert not view.pods.observe(pod("a", "12"), ours=True)
    assert view.pods.get("ns", "a") is None


def test_listeners_of_a_namespace_are_woken_and_nodes_wake_everyone() -> None:
    async def scenario() -> None:
        view = ClusterView()
        mine, other = asyncio.Event(), asyncio.Event()
        view.listen("ns", mine)
        view.listen("other", other)
        view.notify("ns")
        assert mine.is_set() and not other.is_set()
        mine.clear()
        view.notify(None)
        assert mine.is_set() and other.is_set()
        view.unlisten("ns", mine)
        mine.clear()
        view.notify("ns")
        assert not mine.is_set()

    asyncio.run(scenario())


def test_a_listing_answered_after_a_deletion_never_brings_the_object_back() -> None:
    """The listing was made before the watch's DELETED event arrived: it still holds the object."""
    view = ClusterView()
    view.pods.observe(pod("a", "100"))
    view.pods.observe(pod("a", "106"), deleted=True)
    view.pods.replace("ns", [pod("a", "100")], "105")
    assert view.pods.get("ns", "a") is None


def test_an_object_created_again_after_its_deletion_is_listed() -> None:
    view = ClusterView()
    view.pods.observe(pod("a", "100"))
    view.pods.observe(pod("a", "106"), deleted=True)
    assert view.pods.replace("ns", [pod("a", "110", "10.0.0.3")], "111")
    found = view.pods.get("ns", "a")
    assert found is not None and found.pod_ip == "10.0.0.3"


def test_a_deletion_is_remembered_for_a_bounded_time_only() -> None:
    now = [1000.0]
    store = ObjectStore(parse_pod, clock=lambda: now[0])
    store.observe(pod("a", "x1"))
    store.observe(pod("a", "x2"), deleted=True)  # not etcd's integers: not comparable
    assert not store.replace("ns", [pod("a", "x1")], "x3")
    now[0] += TOMBSTONE_SECONDS + 1
    assert store.replace("ns", [pod("a", "x1")], "x3")
    assert store.get("ns", "a") is not None


def test_a_deletion_seen_again_is_remembered_from_its_latest_report() -> None:
    now = [1000.0]
    store = ObjectStore(parse_pod, clock=lambda: now[0])
    store.observe(pod("a", "x2"), deleted=True)
    now[0] += 100
    store.observe(pod("b", "x2"), deleted=True)
    now[0] += 400
    store.observe(pod("a", "x4"), deleted=True)  # reported again: remembered from now
    now[0] += TOMBSTONE_SECONDS - 300  # past a's first report and b's, not a's second
    assert store.replace("ns", [pod("a", "x1"), pod("b", "x1")], "x5")
    assert store.get("ns", "a") is None
    assert store.get("ns", "b") is not None


def test_the_copy_and_the_shape_change_only_with_what_they_are_of() -> None:
    """A pass over ten thousand pods reuses their copy until something changes, and their
    selection until a placement does: a condition written is no reason to select again."""
    view = ClusterView()
    view.pods.observe(pod("a", "1", "10.0.0.1"))
    copy, shape = view.pods.in_namespace("ns"), view.pods.shape_generation("ns")
    assert view.pods.in_namespace("ns") is copy
    conditioned = pod("a", "2", "10.0.0.1")
    conditioned["status"] = {"podIP": "10.0.0.1", "conditions": [{"type": "Ready"}]}
    assert view.pods.observe(conditioned)
    assert view.pods.in_namespace("ns") is not copy
    assert view.pods.in_namespace("ns")["a"].conditions
    assert view.pods.shape_generation("ns") == shape
    assert view.pods.observe(pod("a", "3", "10.0.0.2"))  # moved: another endpoint
    assert view.pods.shape_generation("ns") == shape + 1
    assert view.pods.observe(pod("b", "4"))  # a pod more
    view.pods.observe(pod("a", "5"), deleted=True)
    assert view.pods.shape_generation("ns") == shape + 3
    assert list(view.pods.in_namespace("ns")) == ["b"]
