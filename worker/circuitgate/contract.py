"""The breaker-state document: the one thing the worker and the operator share.

Defined twice on purpose and tested to agree: these dataclasses (what the worker writes)
and ``schemas/breaker-state.v1.json`` (what any reader validates against; the operator
ships an identical copy so it never imports this Celery-side package).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

__all__ = (
    "SCHEMA_ID",
    "BreakerDocument",
    "ConsumerDocument",
    "ConsumerStatusName",
    "FailureNote",
    "ProbeCounts",
    "RecentCalls",
    "StateName",
    "WorkerDocument",
    "load_schema",
)

SCHEMA_ID = "circuitgate.io/breaker-state/v1"

StateName = Literal["closed", "open", "half_open", "forced_open", "forced_closed"]
ConsumerStatusName = Literal[
    "starting", "consuming", "paused", "stalled", "disconnected", "stopping"
]


def _timestamp(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class RecentCalls:
    """Task-time evidence: the breaker's last calls in the whole worker (every pool process),
    so a watcher can compare a worker with its peers. Durations are of the successful calls
    among them (a failing worker often fails fast); None when there were none."""

    calls: int = 0
    failures: int = 0
    p50_seconds: float | None = None
    p90_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class FailureNote:
    """One of the last counted failures: what an SRE wants first. ``message`` is None unless
    the worker exposes failure messages (``circuitgate_expose_failure_messages``)."""

    type: str
    message: str | None
    at: float


@dataclasses.dataclass(frozen=True)
class ProbeCounts:
    """Outcomes of a breaker's probe before the trial (``circuitgate_probe``)."""

    passed: int
    failed: int


@dataclasses.dataclass(frozen=True)
class BreakerDocument:
    """One breaker, as a watcher sees it. Times are Unix seconds here, RFC 3339 in JSON."""

    name: str
    state: StateName
    consecutive_failures: int
    window_calls: int
    window_failures: int
    trips: int
    opened_at: float | None
    may_close_at: float | None
    consumption_paused: bool
    queues: tuple[str, ...] = ()
    paused_queues: tuple[str, ...] = ()
    recent_calls: RecentCalls = RecentCalls()
    last_failures: tuple[FailureNote, ...] = ()
    probes: ProbeCounts | None = None
    """None for a breaker without a probe."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.probes is None:
            del data["probes"]
        data["opened_at"] = _timestamp(self.opened_at)
        data["may_close_at"] = _timestamp(self.may_close_at)
        data["last_failures"] = [
            {**dataclasses.asdict(note), "at": _timestamp(note.at)} for note in self.last_failures
        ]
        data["queues"] = list(self.queues)
        data["paused_queues"] = list(self.paused_queues)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BreakerDocument:
        return cls(
            **{
                **data,
                "opened_at": _parse_time(data["opened_at"]),
                "may_close_at": _parse_time(data["may_close_at"]),
                "queues": tuple(data["queues"]),
                "paused_queues": tuple(data["paused_queues"]),
                "recent_calls": RecentCalls(**data.get("recent_calls", {})),
                "last_failures": tuple(
                    FailureNote(note["type"], note["message"], _parse_time(note["at"]) or 0.0)
                    for note in data.get("last_failures", ())
                ),
                "probes": ProbeCounts(**data["probes"]) if "probes" in data else None,
            }
        )


@dataclasses.dataclass(frozen=True)
class ConsumerDocument:
    """Whether the worker is still taking work: its consumer's status, from the event loop's
    last tick and the broker's last answer, and how busy its pool is. Ages in seconds."""

    status: ConsumerStatusName
    tick_age_seconds: float | None
    unanswered_poll_seconds: float | None
    active_tasks: int
    oldest_task_seconds: float | None


@dataclasses.dataclass(frozen=True)
class WorkerDocument:
    """Everything ``GET /circuit`` answers. ``consumer`` is None where no consumer is watched
    (an endpoint served without a worker)."""

    worker: str
    sequence: int
    generated_at: float
    breakers: tuple[BreakerDocument, ...]
    consumer: ConsumerDocument | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "schema": SCHEMA_ID,
            "worker": self.worker,
            "sequence": self.sequence,
            "generated_at": _timestamp(self.generated_at),
            "breakers": [breaker.to_json() for breaker in self.breakers],
        }
        if self.consumer is not None:
            data["consumer"] = dataclasses.asdict(self.consumer)
        return data

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerDocument:
        generated_at = _parse_time(data["generated_at"])
        return cls(
            worker=data["worker"],
            sequence=data["sequence"],
            generated_at=generated_at if generated_at is not None else 0.0,
            breakers=tuple(BreakerDocument.from_json(b) for b in data["breakers"]),
            consumer=ConsumerDocument(**data["consumer"]) if "consumer" in data else None,
        )


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the document, as shipped inside the package."""
    text = resources.files("circuitgate").joinpath("schemas/breaker-state.v1.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
