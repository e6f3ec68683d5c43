"""The chart's alerts and dashboard on a real Prometheus server, scraping a real Celery worker
and a real operator on loopback: the alerts fire and resolve on the real series, every
dashboard query runs, and the series the promtool cases are written on are the ones the
real endpoints serve. (The alerts' ``for:`` durations are left out here: promtool tests them.)
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from circuitgate_devkit.cluster.objects import Cluster, OperatorProcess
from circuitgate_devkit.ports import next_loopback
from circuitgate_devkit.prometheus import (
    PrometheusServer,
    Target,
    dashboard_queries,
    rules_without_waits,
)
from circuitgate_devkit.waiting import eventually
from circuitgate_operator.decide.intents import Action, Cause
from tests.worker.scenario.conftest import Lab

pytestmark = pytest.mark.integration

CASES = Path(__file__).parents[2] / "chart" / "alerts.test.yaml"
# The labels a PodMonitor gives every target; the rest of a series' labels are its endpoint's.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"})
# Open for 5 s at a time: long enough for the operator to mark the pod unready (a half-open
# pod stays ready).
CONF = {"circuitgate_fail_max": 2, "circuitgate_reset_timeout": 5, "circuitgate_jitter": 0.0,
        "circuitgate_backoff_multiplier": 1.0}  # fmt: skip


def case_series() -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """The promtool cases' series: (metric name, its labels besides the target's)."""
    series = set()
    for case in yaml.safe_load(CASES.read_text())["tests"]:
        for entry in case["input_series"]:
            name, _, labels = entry["series"].partition("{")
            pairs = re.findall(r'(\w+)="([^"]*)"', labels)
            series.add((name, frozenset((k, v) for k, v in pairs if k not in TARGET_LABELS)))
    return series


def literal_values(annotation: object) -> set[str]:
    """The strings a ``Literal`` (or a union of them) allows."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return {str(arg) for arg in args}
    return set().union(*(literal_values(arg) for arg in args))


# Label values the operator declares but a short run does not produce (a cordon held by a cap).
DECLARED = {"action": literal_values(Action), "cause": literal_values(Cause)}


def served(prometheus: PrometheusServer, name: str) -> set[frozenset[tuple[str, str]]]:
    """The label sets Prometheus holds for ``name``, besides the target's."""
    return {
        frozenset((k, v) for k, v in labels.items() if k not in TARGET_LABELS | {"__name__"})
        for labels in prometheus.series(name)
    }


def test_the_alerts_fire_and_resolve_on_a_real_worker_and_operator(
    cluster: Cluster,
    start_operator: Callable[..., OperatorProcess],
    make_lab: Callable[..., Lab],
    tmp_path: Path,
) -> None:
    lab = make_lab("redis")  # the fixture stops its workers and broker, also on failure
    worker = lab.worker("w0", conf=CONF, record_tasks=False, endpoint_host=next_loopback())
    address = (worker.endpoint_host, worker.endpoint_port)
    node = cluster.node("gpu-1")
    cluster.worker_pod("w0", node=node, endpoint=address)
    peer = cluster.worker_pod("w1", node=node)  # one of two tripped is no storm
    cluster.policy(safety={"maxUnreadyPods": 1, "stormThreshold": "100%"})
    operator = start_operator()
    where = {"namespace": cluster.namespace}
    targets = [
        Target("circuitgate-worker", "{}:{}".format(*address), {**where, "pod": "w0"}),
        Target("circuitgate-operator", f"127.0.0.1:{operator.metrics_port}",
               {**where, "pod": "operator"}),
    ]  # fmt: skip
    rules = rules_without_waits(tmp_path / "alerts.yaml")
    with PrometheusServer(tmp_path, targets, [rules]) as prometheus:
        eventually(lambda: len(prometheus.query("up == 1")) == 2, timeout=30, what="scraped")
        eventually(lambda: cluster.condition_status("w0") == "True", timeout=30)
        prometheus.wait_for_evaluations(2)  # the rules have seen the worker healthy
        assert not prometheus.alerts("CircuitGateBreakerOpen", "firing")

        worker.break_device()
        lab.send(6, work_s=0.05)
        (alert,) = eventually(
            lambda: prometheus.alerts("CircuitGateBreakerOpen"),
            timeout=60,
            what="the alert",
        )
        assert {k: alert[k] for k in ("namespace", "pod", "breaker", "severity")} == {
            **where,
            "pod": "w0",
            "breaker": "default",
            "severity": "warning",
        }
        eventually(lambda: cluster.condition_status("w0") == "False", timeout=30)
        eventually(
            lambda: prometheus.query(
                "sum(circuitgate_operator_trip_to_condition_seconds_count) > 0"
            ),
            timeout=30,
            what="the operator's trip-to-condition seen by Prometheus",
        )

        # Both tripped: a storm, so the operator holds the peer's action back.
        cluster.workers.trip(peer, trips=1)
        eventually(lambda: prometheus.alerts("CircuitGateStormSuppression"), timeout=30)
        cluster.workers.close(peer)
        worker.repair_device()
        lab.send(6, work_s=0.05)
        eventually(
            lambda: (
                not prometheus.alerts("CircuitGateBreakerOpen", "firing")
                and not prometheus.alerts("CircuitGateBreakerOpen", "pending")
            ),
            timeout=60,
            what="the alert resolved",
        )
        eventually(lambda: cluster.condition_status("w0") == "True", timeout=30)

        for name, labels in sorted(case_series()):
            held = served(prometheus, name)
            names = {frozenset(k for k, _ in series) for series in held}
            assert frozenset(k for k, _ in labels) in names, f"{name}{dict(labels)}: {held}"
            for key, value in labels:
                values = {v for series in held for k, v in series if k == key}
                assert value in values | DECLARED.get(key, set()), f"{name}: {key}={value}"
        for title, expr in dashboard_queries().items():
            assert isinstance(prometheus.query(expr), list), title

        assert not prometheus.alerts("CircuitGateOperatorDown")
        operator.stop()
        eventually(lambda: prometheus.alerts("CircuitGateOperatorDown"), timeout=30)
