"""Timestamps as Kubernetes writes them (RFC 3339, UTC, ``Z``) and back to Unix seconds."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ("parse_time", "rfc3339")


def rfc3339(seconds: float, *, precise: bool = False) -> str:
    """Whole seconds, as in Kubernetes' own condition and event times; ``precise`` keeps the
    microseconds, for a time that is compared with others."""
    moment = datetime.fromtimestamp(seconds if precise else int(seconds), UTC)
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time, or None for None or anything unparsable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
