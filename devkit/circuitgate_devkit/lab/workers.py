"""Run real ``celery worker`` processes of the lab app, and read what they did."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import TimedOut, eventually

from . import loop_blocker
from .brokers import Broker
from .recorder import EVENTS_ENV
from .records import EventLog, read_records

__all__ = ("Execution", "ExecutionLog", "LabWorker")


@dataclass
class LabWorker:
    """One ``celery -A circuitgate_devkit.lab.app worker`` process."""

    name: str
    broker: Broker
    workdir: Path
    mode: str = "circuitgate"
    concurrency: int = 1
    pool: str = "prefork"
    queues: str = "celery"
    conf: dict[str, Any] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    record_tasks: bool = True
    """Record every message and execution in `events`; off, only readiness and the breakers."""
    endpoint_host: str = "127.0.0.1"
    endpoint_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _readies: int = field(default=0, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """Base URL of the worker's breaker endpoint."""
        return f"http://{self.endpoint_host}:{self.endpoint_port}"

    @property
    def hostname(self) -> str:
        return f"{self.name}@lab"

    @property
    def fault_file(self) -> Path:
        """While this file exists the worker's device is broken."""
        return self.workdir / f"{self.name}.fault"

    @property
    def logfile(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def events(self) -> EventLog:
        """What this worker did, recorded as it happened (`circuitgate_devkit.lab.recorder`)."""
        return EventLog(self.workdir / f"{self.name}.events.jsonl")

    def break_device(self, how: str = "") -> None:
        """Break the device: ``how`` names one of the lab app's ``FAULTS`` (empty: it raises)."""
        self.fault_file.write_text(how)

    def repair_device(self) -> None:
        self.fault_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def event_loop_blocked(self) -> Iterator[None]:
        """Block the main process's thread, where the consumer's event loop runs, while the
        block lasts (`loop_blocker`)."""
        assert self.process is not None
        self._block_flag.write_text("")
        try:
            os.kill(self.process.pid, loop_blocker.SIGNAL)
            yield
        finally:
            self._block_flag.unlink(missing_ok=True)

    @property
    def _block_flag(self) -> Path:
        return self.workdir / f"{self.name}.loop-blocked"

    def start(self, *, wait: bool = True) -> LabWorker:
        env = {
            **os.environ,
            "CIRCUITGATE_LAB_BROKER": json.dumps(self.broker.celery_config()),
            "CIRCUITGATE_LAB_MODE": self.mode,
            "CIRCUITGATE_LAB_CONF": json.dumps(
                {
                    "circuitgate_endpoint_host": self.endpoint_host,
                    "circuitgate_endpoint_port": self.endpoint_port,
                    **self.conf,
                }
            ),
            "CIRCUITGATE_LAB_FAULT": str(self.fault_file),
            loop_blocker.BLOCK_ENV: str(self._block_flag),
            "CIRCUITGATE_LAB_LOG": str(self.workdir / "executions.jsonl"),
            EVENTS_ENV: str(self.events.path),
            "CIRCUITGATE_LAB_RECORD_TASKS": "1" if self.record_tasks else "0",
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "circuitgate_devkit.lab.app", "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-n", self.hostname, "-Q", self.queues,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "INFO", "--logfile", str(self.logfile), *self.extra_args,
        ]  # fmt: skip
        self._readies = len(self.events.of("ready"))
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until this run of the worker consumes, or fail with its error output."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited at start:\n{self.output()}")
            return len(self.events.of("ready")) > self._readies

        try:
            eventually(ready, timeout=timeout, what=f"worker {self.name} ready")
        except TimedOut as exc:
            raise RuntimeError(f"{exc}:\n{self.output()}") from None

    def metric(self, name: str, breaker: str = "default", **labels: str) -> float:
        """The value of sample ``name`` of ``breaker`` with ``labels`` in /metrics."""
        with urllib.request.urlopen(self.endpoint + "/metrics", timeout=10) as reply:
            text = reply.read().decode()
        wanted = {"breaker": breaker, **labels}
        return next(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and wanted.items() <= sample.labels.items()
        )

    def polls(self, breaker: str = "default") -> int:
        """How many times the consumer has asked ``breaker`` whether it may fetch (/metrics).

        Each poll is a chance to fetch: "N more polls and nothing ran" needs no sleep.
        """
        return int(self.metric("circuitgate_gate_polls_total", breaker))

    def wait_for_polls(self, count: int, breaker: str = "default", timeout: float = 30) -> None:
        """Return once the consumer has polled ``breaker`` ``count`` more times."""
        target = self.polls(breaker) + count
        eventually(
            lambda: self.polls(breaker) >= target,
            timeout=timeout,
            what=f"{count} polls of {self.name}'s breaker {breaker}",
        )

    def output(self) -> str:
        """Everything the worker wrote to its log and its stderr."""
        text = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        if self.process is not None and self.process.poll() is not None and self.process.stderr:
            text += self.process.stderr.read().decode(errors="replace")
        return text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (SIGTERM: warm shutdown) and wait; SIGKILL the group if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return process.wait()

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once, as the OOM killer or a node loss would."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass(frozen=True)
class Execution:
    id: str
    n: int
    worker: str
    pid: int
    outcome: str
    start: float
    end: float


class ExecutionLog:
    """The lab app's record of every task execution, one JSON line each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Execution]:
        fields = Execution.__dataclass_fields__
        return [Execution(**{k: r[k] for k in fields}) for r in read_records(self.path)]

    def successes_per_task(self) -> Counter[str]:
        return Counter(e.id for e in self.read() if e.outcome == "success")

    def by_worker(self) -> dict[str, list[Execution]]:
        grouped: dict[str, list[Execution]] = defaultdict(list)
        for execution in self.read():
            grouped[execution.worker].append(execution)
        return dict(grouped)

    def wait_for_successes(self, ids: set[str], timeout: float) -> Counter[str]:
        """Wait until every id has succeeded somewhere (or the timeout); return the counts.

        No failure at the timeout: the caller's assertion on the counts says what is missing.
        """
        with contextlib.suppress(TimedOut):
            eventually(lambda: ids <= self.successes_per_task().keys(), timeout=timeout)
        return self.successes_per_task()
