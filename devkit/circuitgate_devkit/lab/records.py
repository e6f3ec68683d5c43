"""The lab's structured records: JSON lines appended by the workers, read back by the tests.

Every figure and every wait of the lab comes from these records (or from the worker's
endpoint), never from the wording of a log line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ("Event", "EventLog", "append_record", "read_records")


def append_record(path: str | os.PathLike[str], **record: Any) -> None:
    """Append ``record`` as one JSON line, with the writing process and the wall clock.

    One O_APPEND write per line: lines from many processes never interleave.
    """
    line = json.dumps({"pid": os.getpid(), "at": time.time(), **record}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of ``path`` (none while it does not exist yet)."""
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith(b"\n")]  # the last may be half


@dataclass(frozen=True)
class Event:
    """One thing a worker did, as `circuitgate_devkit.lab.recorder` saw it happen."""

    kind: str
    """``ready``, ``received``, ``started`` and ``finished`` (a task's ``task_prerun`` and
    ``task_postrun``), ``transition`` or ``counted_failure`` (a breaker's listener)."""
    at: float
    """Wall clock, in the process that wrote it."""
    pid: int
    task_id: str | None = None
    state: str | None = None
    """A finished task's Celery state: SUCCESS, FAILURE, IGNORED (handed back after a
    counted failure), REJECTED (refused by an open circuit in the pool)."""
    circuit: str | None = None
    """Which circuit: a breaker's name, with ``/pid`` for a breaker of one process only."""
    old: str | None = None
    new: str | None = None
    """A transition's states, named as in the contract (``half_open``)."""
    failures: int | None = None
    trips: int | None = None
    refused: int | None = None
    """Messages the circuit refused so far (circuitgate's breakers only)."""


_FIELDS = frozenset(field.name for field in fields(Event))


class EventLog:
    """One worker's events, in the order they were written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Event]:
        return [
            Event(**{k: v for k, v in record.items() if k in _FIELDS})
            for record in read_records(self.path)
        ]

    def of(self, kind: str, **match: Any) -> list[Event]:
        """The events of ``kind`` whose fields equal ``match``."""
        return [
            event
            for event in self.read()
            if event.kind == kind and all(getattr(event, k) == v for k, v in match.items())
        ]
