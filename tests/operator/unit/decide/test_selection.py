"""Which policy watches which pod, and where its endpoint is."""

from __future__ import annotations

from circuitgate_devkit.cluster.plan_builders import pod, policy
from circuitgate_operator.decide.selection import endpoint_url, resolve_port, select_pods
from circuitgate_operator.model import LabelSelector, PodView


def test_label_selector_expressions() -> None:
    selector = LabelSelector.parse(
        {
            "matchLabels": {"app": "worker"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["gpu", "cpu"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches({"app": "worker", "tier": "gpu"})
    assert not selector.matches({"app": "worker", "tier": "gpu", "canary": "1"})
    assert not selector.matches({"app": "worker", "tier": "tpu"})
    assert not selector.matches({"tier": "gpu"})
    assert not LabelSelector.parse({}).matches({"app": "worker"})  # empty matches nothing


def test_each_pod_is_watched_by_its_one_policy_and_overlaps_are_reported() -> None:
    a = policy("a", selector={"matchLabels": {"app": "worker"}})
    b = policy("b", selector={"matchLabels": {"queue": "gpu"}})
    elsewhere = policy("c", namespace="other")
    deleting = policy("d", selector={"matchLabels": {"app": "worker"}})
    deleting = type(deleting)(**{**deleting.__dict__, "deleting": True})
    plain = pod("plain")
    both = pod("both", labels={"app": "worker", "queue": "gpu"})
    unrelated = pod("unrelated", labels={"app": "web"})
    selection = select_pods([plain, both, unrelated], [a, b, elsewhere, deleting])
    assert [p.name for p in selection.watched["ns/a"]] == ["plain"]
    assert selection.watched["ns/b"] == []
    assert selection.watched["other/c"] == []
    assert selection.overlapping == {"ns/both": ("a", "b")}


def test_port_by_number_or_by_container_port_name() -> None:
    p = PodView("ns", "p", "u", pod_ip="10.1.2.3", container_ports={"breaker": 9100})
    assert resolve_port(p, 8000) == 8000
    assert resolve_port(p, "breaker") == 9100
    assert resolve_port(p, "metrics") is None
    assert endpoint_url(p, "breaker", "/circuit") == "http://10.1.2.3:9100/circuit"
    assert endpoint_url(p, "metrics", "/circuit") is None
    v6 = PodView("ns", "p", "u", pod_ip="fd00::5")
    assert endpoint_url(v6, 8000, "/c") == "http://[fd00::5]:8000/c"
    assert endpoint_url(PodView("ns", "p", "u"), 8000, "/c") is None
