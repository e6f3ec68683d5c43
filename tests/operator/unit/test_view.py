"""The in-memory view: a late watch event never undoes what our own write's answer showed."""

from __future__ import annotations

import asyncio

from circuitgate_operator.view import ClusterView, is_newer


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
