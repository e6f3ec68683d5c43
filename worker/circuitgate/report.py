"""Turn the breakers' shared state into the contract's document."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .breaker_set import BreakerSet
from .consumer_pulse import ConsumerPulse
from .contract import (
    BreakerDocument,
    ConsumerDocument,
    FailureNote,
    ProbeCounts,
    RecentCalls,
    StateName,
    WorkerDocument,
)
from .evidence import summarize
from .shared_state import BreakerSnapshot, State

__all__ = ("describe_breaker", "describe_consumer", "describe_worker")

_NO_CALLS = RecentCalls()


def describe_breaker(
    name: str,
    snapshot: BreakerSnapshot,
    queues: Sequence[str],
    worker_queues: Sequence[str],
    recent_calls: RecentCalls = _NO_CALLS,
    *,
    probed: bool = False,
) -> BreakerDocument:
    """One breaker's entry. ``queues`` empty means it gates all of ``worker_queues``;
    ``probed``: the breaker has a probe, whose outcomes the entry counts."""
    paused = not snapshot.state.flowing
    open_ = snapshot.state in (State.OPEN, State.HALF_OPEN, State.FORCED_OPEN)
    may_close_at = None
    if snapshot.state in (State.OPEN, State.HALF_OPEN) and snapshot.opened_at is not None:
        may_close_at = snapshot.opened_at + snapshot.open_period
    state: StateName = snapshot.state.name.lower()  # type: ignore[assignment]
    return BreakerDocument(
        name=name,
        state=state,
        consecutive_failures=snapshot.fail_counter,
        window_calls=snapshot.window_calls,
        window_failures=snapshot.window_failures,
        trips=snapshot.trips,
        opened_at=snapshot.opened_at if open_ else None,
        may_close_at=may_close_at,
        consumption_paused=paused,
        queues=tuple(queues),
        paused_queues=tuple(queues or worker_queues) if paused else (),
        recent_calls=recent_calls,
        last_failures=tuple(FailureNote(*note) for note in snapshot.last_failures),
        probes=ProbeCounts(snapshot.probe_successes, snapshot.probe_failures) if probed else None,
    )


def describe_consumer(pulse: ConsumerPulse, *, paused: bool) -> ConsumerDocument:
    """The consumer's entry; ``paused``: every circuit refuses fetching."""
    reading = pulse.read()
    return ConsumerDocument(
        status=pulse.status(paused=paused).value,
        tick_age_seconds=_rounded(reading.tick_age),
        unanswered_poll_seconds=_rounded(reading.unanswered_for),
        active_tasks=reading.active_tasks,
        oldest_task_seconds=_rounded(reading.oldest_task_seconds),
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def describe_worker(
    hostname: str,
    breakers: BreakerSet,
    worker_queues: Sequence[str],
    pulse: ConsumerPulse | None = None,
) -> WorkerDocument:
    """The whole ``GET /circuit`` document; its sequence grows with any breaker's version, with
    the evidence's moves (`BreakerSet.sequence`) and with the consumer's changes of health."""
    moves = breakers.evidence.moves() + (pulse.changes() if pulse is not None else 0)
    snapshots = [(breaker, breaker.snapshot()) for breaker in breakers]
    paused = all(not snapshot.state.flowing for _, snapshot in snapshots)
    return WorkerDocument(
        worker=hostname,
        sequence=sum(snapshot.version for _, snapshot in snapshots) + moves,
        generated_at=time.time(),
        consumer=describe_consumer(pulse, paused=paused) if pulse is not None else None,
        breakers=tuple(
            describe_breaker(
                breaker.name or "default",
                snapshot,
                breakers.queues_of(breaker, worker_queues),
                worker_queues,
                summarize(breaker.shared.recent_calls(breaker.settings.evidence_calls)),
                probed=breaker.settings.probe is not None,
            )
            for breaker, snapshot in snapshots
        ),
    )
