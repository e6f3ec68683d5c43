"""Outlier detection: each watched worker judged against its peers, the policy's other workers
with the same breaker, by the task-time evidence their documents carry (Envoy's outlier
detection, on workload evidence rather than requests).

A worker failing 30 % of its tasks while its peers fail none, or three times slower than them,
is broken even though its own breaker never trips; when every worker fails together the
peers' median rises with them and nobody is an outlier (the cause is shared). A worker is
compared with the others (leave-one-out), so one bad worker among three cannot drag the median
its way. A deviation must last ``sustainSeconds`` before the worker is an outlier; what is
recorded of it (``status.outlier`` of its CircuitState, present only while it deviates, so a
healthy fleet costs no writes) is the only memory, and survives a restart.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from ..clock import parse_time, rfc3339
from ..contract import BreakerState, CallEvidence
from ..model import OutlierDetection

__all__ = (
    "Deviation",
    "Measure",
    "Verdict",
    "find_deviations",
    "is_outlier",
    "outlier_condition_message",
    "outlier_event_message",
    "outlier_status",
    "sustained_at",
    "verdict_of",
)

Measure = Literal["failureRate", "p50Seconds"]
_MEASURES: tuple[Measure, ...] = ("failureRate", "p50Seconds")


class Verdict(StrEnum):
    DEVIATING = "deviating"  # deviates, not for long enough yet
    OUTLIER = "outlier"  # deviated for the sustain period: treated like an open circuit


@dataclass(frozen=True)
class Deviation:
    """How one worker's breaker deviates from its peers' now."""

    breaker: str
    measure: Measure
    value: float
    peers_median: float
    peers: int
    calls: int


@dataclass(frozen=True)
class _Peers:
    """One breaker's measure over every worker with enough calls, sorted, with the sums that
    give the mean and deviation of all but one of them."""

    values: tuple[float, ...]
    total: float
    squares: float

    @classmethod
    def of(cls, values: Iterable[float]) -> _Peers:
        ordered = tuple(sorted(values))
        return cls(ordered, math.fsum(ordered), math.fsum(v * v for v in ordered))

    def without(self, value: float) -> tuple[float, float, float]:
        """Median, mean and standard deviation of the others (one occurrence of ``value``
        left out), in O(log n): ten thousand workers are judged in one pass."""
        skip, others = bisect_left(self.values, value), len(self.values) - 1

        def at(j: int) -> float:
            return self.values[j] if j < skip else self.values[j + 1]

        half = others // 2
        median = at(half) if others % 2 else (at(half - 1) + at(half)) / 2
        mean = (self.total - value) / others
        variance = max((self.squares - value * value) / others - mean * mean, 0.0)
        return median, mean, math.sqrt(variance)


# Float noise: 12 % against 2 % is 10 points above, though 0.12 - 0.02 is a hair under 0.1.
_EPSILON = 1e-9


def _deviates(
    value: float,
    peers: tuple[float, float, float],
    factor: float,
    minimum: float,
    stdevs: float | None,
) -> bool:
    median, mean, stdev = peers
    return (
        value > factor * median
        and value - median >= minimum - _EPSILON
        and (stdevs is None or value > mean + stdevs * stdev)
    )


def find_deviations(
    evidence: Mapping[str, Sequence[CallEvidence]], detection: OutlierDetection
) -> dict[str, tuple[Deviation, ...]]:
    """Each worker (by key) that could be judged, with how it deviates from its peers now
    (empty: it does not), failure rate before duration, then by breaker name. Only breakers
    with at least ``min_calls`` calls take part, as judged and as peers, and only with
    ``min_peers`` others; a worker that is in no such comparison is left out (no verdict
    either way)."""
    groups: dict[tuple[str, Measure], dict[str, tuple[float, int]]] = {}
    for key, items in evidence.items():
        for item in items:
            if item.calls < detection.min_calls:
                continue
            groups.setdefault((item.breaker, "failureRate"), {})[key] = (
                item.failure_rate,
                item.calls,
            )
            if item.p50_seconds is not None:
                groups.setdefault((item.breaker, "p50Seconds"), {})[key] = (
                    item.p50_seconds,
                    item.calls,
                )
    rules = {
        "failureRate": (detection.failure_rate_factor, detection.failure_rate_minimum),
        "p50Seconds": (detection.duration_factor, detection.duration_minimum),
    }
    found: dict[str, list[Deviation]] = {}
    order = sorted(groups, key=lambda g: (_MEASURES.index(g[1]), g[0]))
    for breaker, measure in order:
        factor, minimum = rules[measure]
        members = groups[(breaker, measure)]
        if factor is None or len(members) - 1 < detection.min_peers:
            continue
        peers = _Peers.of(value for value, _ in members.values())
        for key, (value, calls) in members.items():
            others = peers.without(value)
            deviations = found.setdefault(key, [])
            if _deviates(value, others, factor, minimum, detection.stdevs):
                deviations.append(
                    Deviation(breaker, measure, value, others[0], len(members) - 1, calls)
                )
    return {key: tuple(deviations) for key, deviations in found.items()}


def _enforced(uid: str, detection: OutlierDetection) -> bool:
    """Whether this pod is in the ``enforcingPercent`` that outliers are marked for: a stable
    choice by its uid, so raising the percentage only adds pods."""
    if detection.dry_run:
        return False
    bucket = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big") % 100
    return bucket < detection.enforcing_percent


def outlier_status(
    uid: str,
    deviations: Sequence[Deviation] | None,
    previous: Mapping[str, Any] | None,
    detection: OutlierDetection,
    now: float,
) -> dict[str, Any] | None:
    """What the pod's CircuitState records of its deviation (None when it deviates from
    nothing): since when it has deviated without a break, by one measure or another, and
    whether that is long enough to make it an outlier. ``deviations`` None: it could not be
    judged this pass, and what was recorded stays as it was. The record keeps the measure
    it names while that measure still deviates, and its figures while the verdict stays, so
    a deviating pod is written when its verdict changes, not whenever its peers move."""
    if deviations is None:
        return dict(previous) if previous else None
    if not deviations:
        return None
    previous = previous or {}
    named = (previous.get("breaker"), previous.get("measure"))
    deviation = next((d for d in deviations if (d.breaker, d.measure) == named), deviations[0])
    since = parse_time(previous.get("since"))
    began = since if since is not None and since <= now else now
    verdict = Verdict.OUTLIER if now - began >= detection.sustain else Verdict.DEVIATING
    status = {
        "verdict": verdict.value,
        "breaker": deviation.breaker,
        "measure": deviation.measure,
        "value": round(deviation.value, 3),
        "peersMedian": round(deviation.peers_median, 3),
        "peers": deviation.peers,
        "calls": deviation.calls,
        "since": rfc3339(began),
        "enforced": _enforced(uid, detection),
    }
    figures = ("value", "peersMedian", "peers", "calls")
    kept = ("verdict", "breaker", "measure", "since", "enforced")
    if all(previous.get(key) == status[key] for key in kept):
        status.update({key: previous[key] for key in figures if key in previous})
    return status


def sustained_at(status: Mapping[str, Any], detection: OutlierDetection) -> float | None:
    """When a deviating pod becomes an outlier if its deviation lasts: a pass is due then."""
    since = parse_time((status.get("outlier") or {}).get("since"))
    if verdict_of(status) != Verdict.DEVIATING or since is None:
        return None
    return since + detection.sustain


_VERDICTS = frozenset(Verdict)


def verdict_of(status: Mapping[str, Any]) -> Verdict | None:
    """What a recorded status says of its pod among its peers (None: nothing deviates).
    Asked of every pod on every pass: nearly always there is no outlier record at all."""
    outlier = status.get("outlier")
    if not outlier:
        return None
    verdict = outlier.get("verdict")
    return Verdict(verdict) if verdict in _VERDICTS else None


# The states in which an outlier is marked: a tripped circuit is marked for that already, and
# one forced closed is an admin's word.
_JUDGED_STATES = frozenset({BreakerState.CLOSED, BreakerState.HALF_OPEN})


def is_outlier(status: Mapping[str, Any]) -> bool:
    """Whether a recorded status makes its pod an outlier to mark unready."""
    enforced = (status.get("outlier") or {}).get("enforced") is True
    judged = status.get("state") in _JUDGED_STATES
    return verdict_of(status) == Verdict.OUTLIER and enforced and judged


def _measure_name(outlier: Mapping[str, Any]) -> str:
    return "failure rate" if outlier.get("measure") == "failureRate" else "median task time"


def _said(outlier: Mapping[str, Any], key: str) -> str:
    value = outlier.get(key)
    if not isinstance(value, int | float):
        return "?"
    return f"{value:.0%}" if outlier.get("measure") == "failureRate" else f"{value:g}s"


def outlier_condition_message(outlier: Mapping[str, Any]) -> str:
    """The readiness condition's message: only what stays while the pod is an outlier (a
    figure in it would rewrite the condition with every reading)."""
    return (
        f"breaker {outlier.get('breaker', '?')} is an outlier among its peers by its "
        f"{_measure_name(outlier)} since {outlier.get('since', '?')}"
    )


def outlier_event_message(outlier: Mapping[str, Any], detection: OutlierDetection) -> str:
    """``breaker default: failure rate 31% over its last 100 calls, peers' median 0% (5
    peers), since …``, and why it is not marked unready when it is not."""
    text = (
        f"breaker {outlier.get('breaker', '?')}: {_measure_name(outlier)} "
        f"{_said(outlier, 'value')} over its last {outlier.get('calls', '?')} calls, "
        f"peers' median {_said(outlier, 'peersMedian')} ({outlier.get('peers', '?')} peers), "
        f"since {outlier.get('since', '?')}"
    )
    if detection.dry_run:
        return text + "; dry run: not marked unready"
    if not outlier.get("enforced"):
        return text + f"; not enforced (enforcingPercent {detection.enforcing_percent})"
    return text
