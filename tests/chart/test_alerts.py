"""The chart's alerts and dashboard, checked offline: promtool runs the alert cases, every
dashboard query parses, and the chart installs exactly these files.
(tests/operator/scenario/test_prometheus.py runs them on a real server against real series.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from circuitgate_devkit.cluster.helm import find, helm, render, render_error
from circuitgate_devkit.paths import CHART, REPO
from circuitgate_devkit.prometheus import ALERTS, DASHBOARD, dashboard_queries, promtool

CASES = Path(__file__).with_name("alerts.test.yaml")
RUNBOOK = REPO / "docs" / "alerts.md"
MONITORING: dict[str, Any] = {
    "monitoring": {
        "labels": {"release": "kube-prometheus-stack"},
        "podMonitor": {"enabled": True},
        "workers": {"enabled": True, "selector": {"matchLabels": {"app": "celery-worker"}}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Celery"}},
    }
}


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def test_the_rules_are_valid() -> None:
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", ALERTS)


def test_each_alert_fires_and_stays_quiet_as_its_cases_say() -> None:
    promtool("test", "rules", CASES)
    cases = yaml.safe_load(CASES.read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"]}
    assert tested == set(alert_names())


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(queries.values())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", path)


def test_the_dashboard_uses_its_data_source_variable_everywhere() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels and dashboard["uid"] == "circuitgate"
    for panel in panels:
        sources = [panel["datasource"], *(target["datasource"] for target in panel["targets"])]
        assert all(source == {"type": "prometheus", "uid": "${datasource}"} for source in sources)
    assert sorted({panel["id"] for panel in dashboard["panels"]}) == list(
        range(1, len(dashboard["panels"]) + 1)
    )


def test_every_alert_has_a_section_in_the_runbook() -> None:
    headings = re.findall(r"^### (\w+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert headings == alert_names()


def test_monitoring_is_off_by_default() -> None:
    kinds = {document["kind"] for document in render()}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap"}


def test_the_chart_installs_the_rules_and_the_dashboard_as_they_are() -> None:
    manifest = render(MONITORING)
    rule = find(manifest, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = find(manifest, "ConfigMap")
    assert json.loads(dashboard["data"]["circuitgate.json"]) == json.loads(DASHBOARD.read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Celery"}


def test_the_dashboard_label_can_be_changed_for_another_sidecar() -> None:
    labels = {"grafana_dashboard": "circuitgate", "team": "ml"}
    manifest = render({"monitoring": {"dashboard": {"enabled": True, "labels": labels}}})
    assert find(manifest, "ConfigMap")["metadata"]["labels"].items() >= labels.items()


def test_the_pod_monitors_scrape_the_named_ports_under_the_jobs_the_alerts_expect() -> None:
    manifest = render(MONITORING)
    operator = find(manifest, "PodMonitor", "circuitgate-operator")
    workers = find(manifest, "PodMonitor", "circuitgate-operator-workers")
    (endpoint,) = operator["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [
        {"targetLabel": "job", "replacement": "circuitgate-operator"}
    ]
    assert (
        operator["spec"]["selector"]["matchLabels"]
        == (find(manifest, "Deployment")["spec"]["selector"]["matchLabels"])
    )
    (endpoint,) = workers["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "circuitgate"  # the contract's name of the breaker endpoint
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "circuitgate-worker"}]
    assert workers["spec"]["selector"] == {"matchLabels": {"app": "celery-worker"}}
    assert workers["spec"]["namespaceSelector"] == {"any": True}


@pytest.mark.parametrize(
    ("namespaces", "expected"),
    [([], {"matchNames": ["team-a"]}), (["gpu"], {"matchNames": ["gpu"]})],
    ids=["watched", "given"],
)
def test_the_worker_monitor_looks_where_the_workers_are(
    namespaces: list[str], expected: dict[str, Any]
) -> None:
    workers = {"enabled": True, "namespaces": namespaces}
    manifest = render({"watchNamespaces": ["team-a"], "monitoring": {"workers": workers}})
    monitor = find(manifest, "PodMonitor", "circuitgate-operator-workers")
    assert monitor["spec"]["namespaceSelector"] == expected


def test_the_rules_come_only_with_the_operator_monitor_their_down_alert_needs() -> None:
    error = render_error({"monitoring": {"prometheusRule": {"enabled": True}}})
    assert "monitoring.prometheusRule.enabled=true needs monitoring.podMonitor.enabled" in error


def test_the_worker_monitor_scrapes_the_port_the_policies_name() -> None:
    values = {"monitoring": {"workers": {"enabled": True, "port": "breaker"}}}
    monitor = find(render(values), "PodMonitor", "circuitgate-operator-workers")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["breaker"]


def test_extra_labels_never_repeat_the_charts() -> None:
    values = {**MONITORING["monitoring"], "labels": {"app.kubernetes.io/part-of": "mine"}}
    manifest = render({"monitoring": values})
    ours = [d for d in manifest if d["kind"] in ("PodMonitor", "PrometheusRule")]
    assert len(ours) == 3
    assert {d["metadata"]["labels"]["app.kubernetes.io/part-of"] for d in ours} == {"circuitgate"}


def test_lint_is_clean_with_monitoring(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(MONITORING))
    result = helm("lint", "--strict", str(CHART), "--values", str(path))
    assert "0 chart(s) failed" in result.stdout
