"""Prometheus as the monitoring tests use it: ``promtool``, and a real server scraping loopback.

Both come from Debian's ``prometheus`` package (``make setup`` installs it); a missing binary
fails the test with that command, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from circuitgate_devkit.paths import CHART
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import eventually

__all__ = (
    "ALERTS",
    "DASHBOARD",
    "PrometheusServer",
    "Target",
    "dashboard_queries",
    "promtool",
    "rules_without_waits",
)

ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "circuitgate.json"
# What Grafana puts in place of the dashboard's variables, for a query Prometheus can run.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*"}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: `make setup` installs Debian's prometheus")
    return path


def promtool(*args: str | Path) -> str:
    """Run ``promtool``; its output, or an AssertionError that shows it."""
    argv = [_binary("promtool"), *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def dashboard_queries(path: Path = DASHBOARD) -> dict[str, str]:
    """Every query of the dashboard, by "panel title / refId", as Grafana would send it."""
    queries = {}
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"{panel['title']} / {target['refId']}"] = expr
    return queries


def rules_without_waits(target: Path, source: Path = ALERTS) -> Path:
    """A copy of the rule file whose alerts fire as soon as their expression holds: a test
    against a real server checks the wiring, ``promtool test rules`` checks the timing."""
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    target.write_text(yaml.safe_dump(rules))
    return target


@dataclass(frozen=True)
class Target:
    """One scrape target, with the target labels a PodMonitor would give it."""

    job: str
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)


class PrometheusServer:
    """A real ``prometheus`` on a free loopback port, scraping and evaluating every second."""

    def __init__(
        self, workdir: Path, targets: Sequence[Target], rule_files: Sequence[Path]
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": target.job,
                    "static_configs": [{"targets": [target.address], "labels": target.labels}],
                }
                for target in targets
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        argv = [
            _binary("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        eventually(self._ready, timeout=60, what=f"prometheus ready; log: {self.log}")
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s data; an AssertionError with the server's error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise AssertionError(f"prometheus refused {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        return list(self.api("query", query=expr)["result"])

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, str]]:
        """The labels of the alerts named ``name`` in ``state`` (pending, firing)."""
        return [
            alert["labels"]
            for alert in self.api("alerts")["alerts"]
            if alert["labels"]["alertname"] == name and alert["state"] == state
        ]

    def evaluations(self) -> float:
        """Rule group evaluations so far, summed over the groups (the server's own /metrics)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("prometheus_rule_group_iterations_total{")
        )

    def wait_for_evaluations(self, rounds: int, timeout: float = 30) -> None:
        """Wait until every group has been evaluated ``rounds`` more times from now."""
        groups = len(self.api("rules")["groups"])
        target = self.evaluations() + rounds * groups
        eventually(lambda: self.evaluations() >= target, timeout=timeout, what="rule evaluations")

    def series(self, match: str) -> Iterator[dict[str, str]]:
        """Every series Prometheus holds that ``match`` selects, as its labels."""
        yield from self.api("series", **{"match[]": match})
