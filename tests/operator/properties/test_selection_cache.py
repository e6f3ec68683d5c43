"""The policy loop selects pods, and syncs their watchers, again only when the pods store's
``shape_generation`` moves. Whatever happens to the pods (labels, addresses, ports, phases,
deletions, conditions, containers), while it stays put the selection and every watched pod's
endpoint are the ones made afresh from the pods as they are now."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from circuitgate_operator.decide.selection import endpoint_url, select_pods
from circuitgate_operator.model import PodView, parse_policy
from circuitgate_operator.view import ClusterView
from tests.profiles import property_settings

NAMES = ("w0", "w1", "w2")
POLICY = parse_policy(
    {
        "metadata": {"name": "pol", "namespace": "ns", "uid": "p"},
        "spec": {"selector": {"matchLabels": {"app": "worker"}}, "endpoint": {"port": "breaker"}},
    }
)

FIELDS: dict[str, tuple[Any, ...]] = {
    "uid": ("a", "b"),
    "app": ("worker", "web", None),
    "ip": ("", "10.0.0.1", "10.0.0.2"),
    "port": (8000, 9000),
    "phase": ("Pending", "Running", "Failed"),
    "deleting": (False, True),
    "ready": ("True", "False"),
    "started": (True, False),
    "gone": (False, True),
}
# One field of one pod at a time, so a change of a single field is tried on its own.
changes = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(sorted(FIELDS)).flatmap(
        lambda key: st.tuples(st.just(key), st.sampled_from(FIELDS[key]))
    ),
)
FIRST = {"uid": "a", "app": "worker", "ip": "10.0.0.1", "port": 8000, "phase": "Running",
         "deleting": False, "ready": "True", "started": True, "gone": False}  # fmt: skip


def body(change: dict[str, Any], version: int) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": change["name"],
        "namespace": "ns",
        "uid": change["uid"],
        "resourceVersion": str(version),
        "labels": {"app": change["app"]} if change["app"] else {},
    }
    if change["deleting"]:
        meta["deletionTimestamp"] = "2027-01-15T08:00:00Z"
    port = {"name": "breaker", "containerPort": change["port"]}
    return {
        "metadata": meta,
        "spec": {"nodeName": "n1", "containers": [{"name": "worker", "ports": [port]}]},
        "status": {
            "phase": change["phase"],
            "podIP": change["ip"],
            "conditions": [{"type": "Ready", "status": change["ready"]}],
            "containerStatuses": [{"name": "worker", "started": change["started"]}],
        },
    }


def shape(pods: dict[str, PodView]) -> dict[str, str | None]:
    """What the loop keeps between passes: the watched pods and their endpoints."""
    watched = select_pods(pods.values(), [POLICY]).watched.get(POLICY.key, [])
    return {pod.name: endpoint_url(pod, "breaker", "/circuit") for pod in watched if pod.running}


@given(st.lists(changes, max_size=40))
@property_settings(quick=200, nightly=3000)
def test_an_unmoved_shape_generation_means_the_same_selection_and_endpoints(
    steps: list[tuple[str, tuple[str, Any]]],
) -> None:
    view = ClusterView()
    generation, kept = view.pods.shape_generation("ns"), shape({})
    pods_now = {name: {**FIRST, "name": name} for name in NAMES}
    for version, (name, (key, value)) in enumerate(steps, start=1):
        change = pods_now[name] = {**pods_now[name], key: value}
        view.pods.observe(body(change, version), deleted=change["gone"])
        pods = dict(view.pods.in_namespace("ns"))
        if view.pods.shape_generation("ns") == generation:
            assert shape(pods) == kept
        generation, kept = view.pods.shape_generation("ns"), shape(pods)
