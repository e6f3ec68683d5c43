"""Drive the worker-endpoint stand-in process (`circuitgate_devkit.cluster.endpoint_server`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from circuitgate_devkit.paths import REPO
from circuitgate_devkit.ports import free_port, next_loopback
from circuitgate_devkit.waiting import eventually

__all__ = ("FakeWorkers",)


class FakeWorkers:
    """One process serving the breaker document on many loopback addresses, one per pod."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.control_port = free_port()
        self.log = workdir / "fake-workers.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeWorkers:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "circuitgate_devkit.cluster.endpoint_server",
                    "--port", str(self.port), "--control-port", str(self.control_port),
                ],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        eventually(self._answers, timeout=30, interval=0.05, what="the fake workers' control port")
        return self

    def _answers(self) -> bool:
        """The control port accepts connections; a process that died says why."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"fake workers exited:\n{self.log.read_text()}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.control_port), 0.2),
        ):
            return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def add(self, host: str | None = None) -> str:
        host = host or next_loopback()
        self._call("POST", "/endpoints", {"host": host})
        return host

    def add_many(self, hosts: list[str]) -> None:
        self._call("POST", "/endpoints", {"hosts": hosts})

    def set(self, host: str, **change: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/endpoints/{host}", change)
        return result

    def bulk(self, hosts: list[str], **change: Any) -> None:
        self._call("POST", "/bulk", {"hosts": hosts, "change": change})

    def show(self, host: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/endpoints/{host}")
        return result

    def trip(self, host: str, *, trips: int, open_for: float = 300.0) -> float:
        """Open the host's breaker now (its ``trips``-th trip); returns when it opened."""
        return self.trip_all([host], trips=trips, open_for=open_for)

    def trip_all(self, hosts: list[str], *, trips: int, open_for: float = 300.0) -> float:
        """Open the hosts' breakers in one change, as one shared cause would."""
        now = time.time()
        self.bulk(
            hosts,
            breaker={
                "state": "open",
                "trips": trips,
                "consecutive_failures": 5,
                "opened_at": now,
                "may_close_at": now + open_for,
                "consumption_paused": True,
            },
        )
        return now

    def close(self, host: str) -> None:
        self.set(
            host,
            breaker={
                "state": "closed",
                "consecutive_failures": 0,
                "opened_at": None,
                "may_close_at": None,
                "consumption_paused": False,
            },
        )

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}/circuit"
