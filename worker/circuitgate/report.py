"""Turn the breakers' shared state into the contract's document."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .breaker_set import BreakerSet
from .contract import BreakerDocument, FailureNote, RecentCalls, StateName, WorkerDocument
from .evidence import summarize
from .shared_state import BreakerSnapshot, State

__all__ = ("describe_breaker", "describe_worker")

_NO_CALLS = RecentCalls()


def describe_breaker(
    name: str,
    snapshot: BreakerSnapshot,
    queues: Sequence[str],
    worker_queues: Sequence[str],
    recent_calls: RecentCalls = _NO_CALLS,
) -> BreakerDocument:
    """One breaker's entry. ``queues`` empty means it gates all of ``worker_queues``."""
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
    )


def describe_worker(
    hostname: str, breakers: BreakerSet, worker_queues: Sequence[str]
) -> WorkerDocument:
    """The whole ``GET /circuit`` document; its sequence grows with any breaker's version and
    with the evidence's moves (`BreakerSet.sequence`)."""
    moves = breakers.evidence.moves()
    snapshots = [(breaker, breaker.snapshot()) for breaker in breakers]
    return WorkerDocument(
        worker=hostname,
        sequence=sum(snapshot.version for _, snapshot in snapshots) + moves,
        generated_at=time.time(),
        breakers=tuple(
            describe_breaker(
                breaker.name or "default",
                snapshot,
                breakers.queues_of(breaker, worker_queues),
                worker_queues,
                summarize(breaker.shared.recent_calls(breaker.settings.evidence_calls)),
            )
            for breaker, snapshot in snapshots
        ),
    )
