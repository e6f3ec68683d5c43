"""Faults injected into real ``celery worker`` processes on real brokers, and their tally.

One broker and one worker whose device breaks per broker kind, shared by every case: each
case breaks the device its way, sends its tasks, brings a healthy worker up to take what
was handed back, repairs the device and waits for the breaker to close again, so the next
case starts from a closed circuit. Every case adds a row (delivered, executed, succeeded
once, failed through the normal path, lost, duplicated) to the tally printed after the run.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from circuitgate_devkit.lab.workers import LabWorker
from circuitgate_devkit.waiting import eventually
from tests.worker.scenario.conftest import BROKERS, Lab

FAULT_BROKERS = sorted(BROKERS)
CONF = {
    "circuitgate_fail_max": 4,
    "circuitgate_reset_timeout": 1.5,
    "circuitgate_backoff_multiplier": 1.0,
    "circuitgate_jitter": 0.0,
    "circuitgate_max_deliveries": 3,
    "worker_lost_wait": 1.0,  # how long Celery waits for a dead child's result (default 10 s)
}


@dataclass(frozen=True)
class Tally:
    fault: str
    broker: str
    sent: int
    delivered: int
    """Messages of these ids that reached a worker's pool (``task_received``), copies included."""
    executed: int
    """Executions that ran to an end and logged it (a child killed mid-task logs none)."""
    succeeded_once: int
    failed_normally: int
    """Ended through Celery's own failure path on purpose: poison, revoked, timed out."""
    lost: int
    duplicated: int


TALLIES: list[Tally] = []


class FaultLab:
    """A broker, a worker whose device breaks, and healthy workers brought up per case."""

    def __init__(self, lab: Lab, kind: str) -> None:
        self.lab = lab
        self.kind = kind
        results = lab.workdir / "results"  # Celery's file backend: a lost child's
        results.mkdir()  # stored SUCCESS is visible to the main process
        self.bad = lab.worker("bad", conf={**CONF, "result_backend": f"file://{results}"})

    def healthy(self, name: str, **options: Any) -> LabWorker:
        return self.lab.worker(name, conf={**CONF, **options.pop("conf", {})}, **options)

    def trips(self) -> int:
        return len(self.bad.events.of("transition", new="open"))

    def state(self) -> str:
        with urllib.request.urlopen(self.bad.endpoint + "/circuit", timeout=10) as reply:
            return str(json.load(reply)["breakers"][0]["state"])

    def wait_for_trip(self, since: int, timeout: float = 60) -> None:
        """Wait until the bad worker has tripped more than ``since`` times in all."""
        eventually(lambda: self.trips() > since, timeout=timeout, what=f"{self.bad.name} trips")

    def repair_and_close(self, timeout: float = 60) -> None:
        """Repair the device, then send work until the bad worker's circuit is closed."""
        self.bad.repair_device()
        probe: list[str] = []

        def closed() -> bool:
            if self.state() == "closed":
                return True
            if not probe or self.lab.log.successes_per_task()[probe[-1]]:
                probe.extend(self.lab.send(1, work_s=0.05))
            return False

        eventually(closed, timeout=timeout, interval=0.5, what=f"{self.bad.name} closes")

    def settle_behind(self, task_id: str, deliveries: int = 1) -> None:
        """Return once two probes sent after ``task_id`` have succeeded, and check that
        ``task_id`` was delivered ``deliveries`` times: the bad worker has one pool process,
        so the probes finish in order behind it, and a copy published on its way out would
        have been delivered before the second probe."""
        for _ in range(2):
            probe = self.lab.send(1, work_s=0.05)
            self.lab.log.wait_for_successes(set(probe), timeout=60)
        assert self.deliveries(task_id) == deliveries, "the task was published again"

    def wait_for_the_lost_child(
        self, line: str, otherwise: Callable[[], bool], *, times: int = 1
    ) -> None:
        """Wait until the main process has settled a lost child: the bad worker's log holds
        ``line`` ``times`` times (the path taken when right), or ``otherwise`` holds (what
        the wrong path shows: a second run, a second copy), for the caller's assertions."""

        def settled() -> bool:
            return self.bad.logfile.read_text().count(line) >= times or otherwise()

        eventually(settled, timeout=60, what="the main process settles the lost child")

    def deliveries(self, task_id: str) -> int:
        """Messages of ``task_id`` that reached a worker's pool, copies included."""
        return sum(len(w.events.of("received", task_id=task_id)) for w in self.lab.workers)

    def tally(self, fault: str, ids: list[str], *, ended: frozenset[str] = frozenset()) -> Tally:
        """Count what became of ``ids``, record it for the summary, and return it."""
        executions = [e for e in self.lab.log.read() if e.id in set(ids)]
        successes = Counter(e.id for e in executions if e.outcome == "success")
        row = Tally(
            fault=fault,
            broker=self.kind,
            sent=len(ids),
            delivered=sum(self.deliveries(i) for i in ids),
            executed=len(executions),
            succeeded_once=sum(1 for i in ids if successes[i] == 1),
            failed_normally=sum(1 for i in ids if i in ended and not successes[i]),
            lost=sum(1 for i in ids if not successes[i] and i not in ended),
            duplicated=sum(1 for i in ids if successes[i] > 1),
        )
        TALLIES.append(row)
        return row


@pytest.fixture(scope="session", params=FAULT_BROKERS)
def faults(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultLab]:
    kind = str(request.param)
    options = {} if kind == "rabbitmq" else {"visibility_timeout": 300}
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(BROKERS[kind](**options))
        lab = Lab(broker, Path(tmp_path_factory.mktemp(f"faults-{kind}")))
        stack.callback(lab.close)
        yield FaultLab(lab, kind)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLIES:
        return
    terminalreporter.section("fault tally: what became of every task id")
    terminalreporter.line(
        f"{'fault':<32} {'broker':<9} {'sent':>4} {'delivered':>9} {'executed':>8} {'once':>5}"
        f" {'failed':>6}"
        f" {'lost':>4} {'dup':>4}"
    )
    for t in TALLIES:
        terminalreporter.line(
            f"{t.fault:<32} {t.broker:<9} {t.sent:>4} {t.delivered:>9} {t.executed:>8}"
            f" {t.succeeded_once:>5}"
            f" {t.failed_normally:>6} {t.lost:>4} {t.duplicated:>4}"
        )
