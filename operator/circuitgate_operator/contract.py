"""Reading the worker's breaker-state document: validated against the shipped schema, boiled down
to one ``Reading`` per pod, and ``unknown`` (with a reason) for anything that is not a valid
document. Never ``closed`` by default, never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator

__all__ = (
    "INT64_MAX",
    "SCHEMA_ID",
    "SCHEMA_PATH",
    "TRIPPED_STATES",
    "BreakerState",
    "CallEvidence",
    "ErrorKind",
    "Reading",
    "load_schema",
    "parse_document",
    "unknown",
)

SCHEMA_ID = "circuitgate.io/breaker-state/v1"
SCHEMA_PATH = Path(__file__).with_name("schemas") / "breaker-state.v1.json"
# The schema bounds every integer to this: what the API server stores in an integer field.
INT64_MAX = 2**63 - 1


class BreakerState(StrEnum):
    """A breaker's state as the document names it, plus ``unknown`` for no usable answer."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    UNKNOWN = "unknown"


# States that count as an open circuit: a breaker that tripped and has not closed yet.
TRIPPED_STATES = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.FORCED_OPEN})
# When a worker has several breakers, the pod reads as its most severe one.
_SEVERITY = {
    BreakerState.FORCED_OPEN: 4,
    BreakerState.OPEN: 3,
    BreakerState.HALF_OPEN: 2,
    BreakerState.FORCED_CLOSED: 1,
    BreakerState.CLOSED: 0,
}

# Why a read gave no valid document, as a small fixed label set (the reason says more).
ErrorKind = Literal[
    "refused", "unreachable", "timeout", "http_status", "oversized", "malformed", "no_port", "other"
]


@dataclass(frozen=True)
class CallEvidence:
    """One breaker's recent calls as its worker summarised them: what a worker is compared
    with its peers by. ``p50_seconds`` is None when none of them succeeded."""

    breaker: str
    calls: int
    failures: int
    p50_seconds: float | None

    @property
    def failure_rate(self) -> float:
        """Counted failures per call (a hostile count above the calls reads as all of them)."""
        return min(self.failures, self.calls) / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Reading:
    """What one request to a pod's endpoint told us. ``state`` is ``unknown`` when the endpoint
    was unreachable or its answer unusable; ``error`` and ``reason`` then say why."""

    url: str
    state: BreakerState
    reachable: bool
    reason: str = ""
    error: ErrorKind | None = None
    breaker: str = ""
    failures: int = 0
    trips: int = 0
    opened_at: str | None = None
    may_close_at: str | None = None
    consumption_paused: bool = False
    sequence: int | None = None
    last_failures: tuple[tuple[str, str | None], ...] = ()
    """The worst breaker's last counted failures, oldest first: exception type and message
    (None unless the worker exposes messages)."""
    evidence: tuple[CallEvidence, ...] = ()
    """Each breaker's recent calls, from workers that summarise them."""
    consumer: str | None = None
    """What the worker's consumer is doing (consuming, stalled, ...), from workers that say."""


@cache
def load_schema() -> dict[str, Any]:
    """The breaker-state JSON Schema shipped in this package (a copy of the worker's)."""
    # Next to this module rather than importlib.resources: an editable install made before
    # the package had an __init__.py maps it as a namespace package, which resources rejects.
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def unknown(url: str, error: ErrorKind, reason: str) -> Reading:
    """No usable answer: never read as closed."""
    return Reading(url=url, state=BreakerState.UNKNOWN, reachable=False, reason=reason, error=error)


def _valid_time(value: str | None) -> bool:
    """RFC 3339 with a zone, and an instant that UTC can spell (year 1 at +01:00 cannot)."""
    if value is None:
        return True
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            return False
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return True


def parse_document(url: str, payload: bytes) -> Reading:
    """Turn an answer body into a Reading: the pod's most severe breaker, or unknown.

    Never raises: a hostile body can make the parser or the validator fail in ways no list of
    exception types foresees (nesting deep enough for a RecursionError, a time past year 9999
    once in UTC); any of them is an unknown Reading with the exception's name as the reason.
    """
    try:
        return _read(url, payload)
    except Exception as error:  # any failure on a reply is a reading, not a crash
        return unknown(url, "malformed", f"malformed document: {type(error).__name__}")


class _NotFinite(ValueError):
    pass


def _not_a_number(constant: str) -> float:
    """Python's JSON reads NaN and Infinity, which are not JSON and pass every bound check."""
    raise _NotFinite(constant)


def _read(url: str, payload: bytes) -> Reading:
    try:
        document = json.loads(payload, parse_constant=_not_a_number)
    except _NotFinite:
        return unknown(url, "malformed", "malformed document: a number is not finite")
    except (ValueError, UnicodeDecodeError):
        return unknown(url, "malformed", "malformed document: not JSON")
    error = next(iter(_validator().iter_errors(document)), None)
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "document"
        return unknown(
            url, "malformed", f"malformed document: {where}: {error.validator} check failed"
        )
    breakers = document["breakers"]
    times = [document["generated_at"]]
    times += [b[key] for b in breakers for key in ("opened_at", "may_close_at")]
    times += [note["at"] for b in breakers for note in b.get("last_failures", ())]
    if not all(_valid_time(value) for value in times):
        return unknown(
            url, "malformed", "malformed document: a timestamp is not RFC 3339 with a zone"
        )
    worst = max(breakers, key=lambda b: (_SEVERITY[BreakerState(b["state"])], b["name"]))
    return Reading(
        url=url,
        state=BreakerState(worst["state"]),
        reachable=True,
        breaker=worst["name"],
        # int(): JSON Schema counts 5.0 as an integer; CircuitState's fields want 5.
        failures=int(worst["consecutive_failures"]),
        trips=min(sum(int(b["trips"]) for b in breakers), INT64_MAX),
        opened_at=_normalise_time(worst["opened_at"]),
        may_close_at=_normalise_time(worst["may_close_at"]),
        consumption_paused=any(b["consumption_paused"] for b in breakers),
        sequence=int(document["sequence"]),
        last_failures=tuple(
            (note["type"], note["message"]) for note in worst.get("last_failures", ())
        ),
        evidence=tuple(
            CallEvidence(
                b["name"], int(calls["calls"]), int(calls["failures"]), calls["p50_seconds"]
            )
            for b in breakers
            if (calls := b.get("recent_calls")) is not None
        ),
        consumer=document["consumer"]["status"] if "consumer" in document else None,
    )


def _normalise_time(value: str | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``: one spelling per instant, so an unchanged time never looks
    like a change."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return parsed.isoformat().replace("+00:00", "Z")
