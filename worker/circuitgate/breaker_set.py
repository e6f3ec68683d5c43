"""A worker's breakers, and which queues each one gates."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .breaker import SharedCircuitBreaker
from .evidence import EvidenceClock
from .settings import Settings

__all__ = ("CLAIMED_HERE", "DEFAULT", "BreakerSet", "queue_of", "release_claim")

DEFAULT = "default"
"""The breaker of every queue that no named breaker is bound to."""


def queue_of(delivery_info: Mapping[str, Any] | None) -> str | None:
    """The queue a message came from, as Celery's default routing names it (the routing key)."""
    if not delivery_info:
        return None
    routing_key = delivery_info.get("routing_key")
    return str(routing_key) if routing_key else None


CLAIMED_HERE = "circuitgate_claimed_trial"
"""Set in a message's ``delivery_info`` when the gate claimed the trial for that delivery:
only its own claim may be given back when Celery discards it (another delivery of the same
task id may hold the claim, running)."""


def release_claim(breakers: BreakerSet, request: Any) -> None:
    """Give back the half-open trial claim of a request discarded unrun, if its delivery
    holds it."""
    if (request.message.delivery_info or {}).get(CLAIMED_HERE):
        breakers.for_queue(queue_of(request.delivery_info)).release(request.id)


class BreakerSet:
    """The ``default`` breaker plus one per ``circuitgate_breakers`` entry.

    A GPU queue and a CPU queue on one worker get a breaker each, so a broken GPU pauses
    only the GPU queue. With no named breakers, the default one gates the whole worker.
    """

    def __init__(self, settings: Settings) -> None:
        self.default = SharedCircuitBreaker(settings, name=DEFAULT)
        self.named = {
            spec.name: SharedCircuitBreaker(spec.settings, name=spec.name)
            for spec in settings.breakers
        }
        self._bound = {queue: spec.name for spec in settings.breakers for queue in spec.queues}
        self.evidence = EvidenceClock(self._calls_noted, settings.evidence_seconds)

    def _calls_noted(self) -> int:
        return sum(breaker.shared.calls_noted() for breaker in self)

    def sequence(self) -> int:
        """The document's change counter: every breaker's version, and the evidence's moves."""
        return sum(breaker.shared.version() for breaker in self) + self.evidence.moves()

    def __iter__(self) -> Iterator[SharedCircuitBreaker]:
        yield self.default
        yield from self.named.values()

    @property
    def per_queue(self) -> bool:
        """Whether some queues have a breaker of their own."""
        return bool(self.named)

    @property
    def only(self) -> SharedCircuitBreaker | None:
        """The one breaker of a worker without per-queue ones: per-task paths take it without
        looking up the message's queue."""
        return None if self.named else self.default

    def get(self, name: str) -> SharedCircuitBreaker:
        """The breaker called ``name``; KeyError names the ones there are."""
        if name == DEFAULT:
            return self.default
        try:
            return self.named[name]
        except KeyError:
            raise KeyError(f"no breaker {name!r}; breakers: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return [breaker.name or DEFAULT for breaker in self]

    def for_queue(self, queue: str | None) -> SharedCircuitBreaker:
        """The breaker that gates ``queue``."""
        name = self._bound.get(queue) if queue is not None else None
        return self.named[name] if name is not None else self.default

    def queues_of(self, breaker: SharedCircuitBreaker, consumed: Sequence[str]) -> tuple[str, ...]:
        """The queues ``breaker`` gates; empty for the default breaker of a whole worker."""
        if breaker is not self.default:
            return tuple(q for q, name in self._bound.items() if name == breaker.name)
        if not self.per_queue:
            return ()
        return tuple(q for q in consumed if q not in self._bound)
