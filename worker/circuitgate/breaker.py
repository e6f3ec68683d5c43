"""A pybreaker circuit breaker whose state and transitions are shared by a worker's processes."""

from __future__ import annotations

import enum
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pybreaker
from celery.exceptions import Ignore, Reject, Retry

from .settings import Settings
from .shared_state import BreakerFields, BreakerSnapshot, SharedBreakerState, State
from .storage import SharedMemoryStorage

__all__ = ("NEVER_COUNTED", "Admission", "SharedCircuitBreaker", "open_period")

logger = logging.getLogger(__name__)
T = TypeVar("T")

NEVER_COUNTED: tuple[type[BaseException], ...] = (Retry, Reject, Ignore)
"""Celery's control-flow exceptions say nothing about the worker's health."""

# pybreaker knows three states; a forced state looks to it like the one it forces.
_PYBREAKER_NAMES = {
    State.CLOSED: pybreaker.STATE_CLOSED,
    State.OPEN: pybreaker.STATE_OPEN,
    State.HALF_OPEN: pybreaker.STATE_HALF_OPEN,
    State.FORCED_OPEN: pybreaker.STATE_OPEN,
    State.FORCED_CLOSED: pybreaker.STATE_CLOSED,
}
Transitions = list[tuple[State, State]]


class Admission(enum.Enum):
    """What the breaker lets a task do."""

    RUN = "run"
    """The circuit is closed: run as usual."""
    TRIAL = "trial"
    """Run as the one half-open trial whose outcome closes or re-opens the circuit."""
    REFUSE = "refuse"
    """Do not run here: hand the message back to the queue."""


def open_period(consecutive_trips: int, settings: Settings, rand: float) -> float:
    """Seconds to stay open: exponential in consecutive trips, capped, with jitter.

    ``rand`` is uniform in [0, 1); jitter spreads workers that tripped together so they
    do not send their trials in step.
    """
    base = settings.reset_timeout * settings.backoff_multiplier ** max(consecutive_trips - 1, 0)
    capped = min(base, settings.max_reset_timeout)
    return min(capped * (1 + settings.jitter * (2 * rand - 1)), settings.max_reset_timeout)


class SharedCircuitBreaker(pybreaker.CircuitBreaker):
    """One circuit for the whole worker: the main process and every pool child.

    It keeps pybreaker's face (``fail_max``, ``reset_timeout``, ``exclude``, listeners,
    ``current_state``, ``fail_counter``, ``call``) over a `SharedMemoryStorage`, and
    replaces the parts that cannot work across processes: pybreaker's ``call()`` holds a
    per-process lock for the whole call (one task at a time under the threads pool) and
    moves between states in several unsynchronised steps. Here each decision is one short
    transaction on the shared page, and a call runs outside any lock.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        shared: SharedBreakerState | None = None,
        name: str = "default",
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.shared = shared or SharedBreakerState()
        exclude: list[Any] = [*NEVER_COUNTED, *settings.ignore_exceptions]
        if settings.count_exceptions:
            counted = settings.count_exceptions
            exclude.append(lambda exc: not isinstance(exc, counted))
        super().__init__(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout,
            exclude=exclude,
            listeners=list(listeners),
            state_storage=SharedMemoryStorage(self.shared),
            name=name,
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._rand = rand
        self._tokens = itertools.count()
        self.polls = 0
        """Times this process asked `fetch_allowed` (the consumer's polls, in the main process)."""

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> BreakerSnapshot:
        """Everything the breaker knows, read consistently."""
        return self.shared.snapshot()

    @property
    def state(self) -> pybreaker.CBStateType:
        """The current state, without pybreaker's side effects on a cached state object."""
        return self._create_new_state(self.current_state)

    @state.setter
    def state(self, name: str) -> None:
        {"open": self.open, "closed": self.close, "half-open": self.half_open}[name]()

    def fetch_allowed(self) -> bool:
        """Whether the consumer may fetch now. Runs on every poll: one shared read, one clock.

        Open: not until the open period ends. Half-open: not while the trial is out, unless
        it is overdue (``open_until`` holds the trial's deadline then). Forced open: never
        (``open_until`` is infinite).
        """
        self.polls += 1
        state, open_until = self.shared.gate_view()
        return state.flowing or self._clock() >= open_until

    def counts(self, exc: BaseException) -> bool:
        """Whether this exception is evidence that the worker is broken."""
        return self.is_system_error(exc)

    # -- deciding ------------------------------------------------------------------------

    def admit(self, token: str) -> Admission:
        """Decide whether the task identified by ``token`` may run on this worker now.

        Asking again with the same token gives the same answer, so the main process can
        claim the trial when a message arrives and the pool child confirm it.
        """
        state, open_until = self.shared.gate_view()
        now = self._clock()
        if state.flowing:
            return Admission.RUN
        if state is not State.HALF_OPEN and now < open_until:
            with self.shared.transaction() as fields:
                fields.refused_total += 1
            return Admission.REFUSE
        changes: Transitions = []
        with self.shared.transaction() as fields:
            admission = self._admit(fields, token.encode()[:64], now, changes)
        self._announce(changes)
        return admission

    def _admit(self, f: BreakerFields, token: bytes, now: float, changes: Transitions) -> Admission:
        if State(f.state).flowing:
            return Admission.RUN
        if f.state == State.HALF_OPEN and f.trial_id == token:
            return Admission.TRIAL
        if now >= f.open_until:  # the open period, or an overdue trial, is over
            if f.state == State.OPEN:
                changes.append((State.OPEN, State.HALF_OPEN))
            f.state = State.HALF_OPEN
            f.success_counter = 0
            f.trial_id = token
            f.open_until = now + self.settings.trial_timeout
            return Admission.TRIAL
        f.refused_total += 1
        return Admission.REFUSE

    def record_success(self, token: str) -> None:
        """A task ran to the end (or failed in a way that does not count)."""
        changes: Transitions = []
        with self.shared.transaction() as f:
            f.successes_total += 1
            if f.state == State.HALF_OPEN and f.trial_id == token.encode()[:64]:
                f.trial_successes += 1
                self._close(f, changes)
            elif f.state == State.CLOSED:
                f.fail_counter = 0
                self._push_outcome(f, failed=False)
        self._announce(changes)
        for listener in self.listeners:
            listener.success(self)

    def record_failure(self, token: str, exc: BaseException) -> None:
        """A task failed in a way that counts against the worker."""
        changes: Transitions = []
        with self.shared.transaction() as f:
            f.failures_total += 1
            if f.state == State.HALF_OPEN and f.trial_id == token.encode()[:64]:
                f.trial_failures += 1
                self._trip(f, changes)
            elif State(f.state).flowing:
                f.fail_counter += 1
                self._push_outcome(f, failed=True)
                tripped = f.fail_counter >= self.fail_max or self._rate_exceeded(f)
                if tripped and f.state == State.CLOSED:  # forced closed never trips
                    self._trip(f, changes)
            # Failures of tasks that started before the trip change nothing more.
        self._announce(changes)
        for listener in self.listeners:
            listener.failure(self, exc)

    def release(self, token: str) -> None:
        """The trial ended without a verdict (a poison message): the next task tries instead."""
        with self.shared.transaction() as f:
            if f.state == State.HALF_OPEN and f.trial_id == token.encode()[:64]:
                f.state = State.OPEN
                f.trial_id = b""
                f.open_until = self._clock()

    def force(self, state: State | None) -> None:
        """Hold the circuit open or closed by hand, or (None) give it back to the rules.

        Forced open drains the worker for maintenance: nothing is fetched and whatever
        arrives goes back to the queue. Back to automatic starts closed, with no history.
        """
        changes: Transitions = []
        with self.shared.transaction() as f:
            if state is State.FORCED_OPEN and f.state != State.FORCED_OPEN:
                changes.append((State(f.state), State.FORCED_OPEN))
                f.state = State.FORCED_OPEN
                f.trial_id = b""
                f.opened_at = self._wall_clock()
                f.open_until = float("inf")
            elif state is State.FORCED_CLOSED and f.state != State.FORCED_CLOSED:
                self._close(f, changes)
                changes[-1] = (changes[-1][0], State.FORCED_CLOSED)
                f.state = State.FORCED_CLOSED
            elif state is None and f.state != State.CLOSED:
                self._close(f, changes)
            elif state not in (None, State.FORCED_OPEN, State.FORCED_CLOSED):
                raise ValueError(f"cannot force {state!r}: only FORCED_OPEN or FORCED_CLOSED")
        self._announce(changes)

    def note_handed_back(self) -> None:
        """Count a message this worker gave back to the queue after a counted failure."""
        with self.shared.transaction() as f:
            f.handed_back_total += 1

    # -- transitions (inside a transaction) ----------------------------------------------

    def _trip(self, f: BreakerFields, changes: Transitions) -> None:
        changes.append((State(f.state), State.OPEN))
        f.state = State.OPEN
        f.trips += 1
        f.consecutive_trips += 1
        f.success_counter = 0
        f.trial_id = b""
        f.open_period = open_period(f.consecutive_trips, self.settings, self._rand())
        f.opened_at = self._wall_clock()
        f.open_until = self._clock() + f.open_period
        self._clear_window(f)

    def _close(self, f: BreakerFields, changes: Transitions) -> None:
        changes.append((State(f.state), State.CLOSED))
        f.state = State.CLOSED
        f.fail_counter = 0
        f.consecutive_trips = 0
        f.trial_id = b""
        f.opened_at = 0.0
        f.open_until = 0.0
        self._clear_window(f)

    def _push_outcome(self, f: BreakerFields, *, failed: bool) -> None:
        size = self.settings.window_size
        if f.window_len == size:
            f.window_failures -= f.window[f.window_pos]
        else:
            f.window_len += 1
        f.window[f.window_pos] = int(failed)
        f.window_failures += int(failed)
        f.window_pos = (f.window_pos + 1) % size

    def _rate_exceeded(self, f: BreakerFields) -> bool:
        threshold = self.settings.failure_rate_threshold
        if threshold is None or f.window_len < self.settings.min_calls:
            return False
        return f.window_failures / f.window_len >= threshold

    @staticmethod
    def _clear_window(f: BreakerFields) -> None:
        f.window_len = f.window_pos = f.window_failures = 0

    def _announce(self, changes: Transitions) -> None:
        for old, new in changes:
            log = logger.warning if new is State.OPEN else logger.info
            snapshot = self.shared.snapshot()
            log(
                "circuit %s: %s -> %s (failures=%d, trips=%d, open for %.1fs)",
                self.name,
                old.name.lower(),
                new.name.lower(),
                snapshot.fail_counter,
                snapshot.trips,
                snapshot.open_period if new is State.OPEN else 0.0,
            )
            for listener in self.listeners:
                listener.state_change(
                    self,
                    self._create_new_state(_PYBREAKER_NAMES[old]),
                    self._create_new_state(_PYBREAKER_NAMES[new]),
                )

    # -- pybreaker's public face ---------------------------------------------------------

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` under the breaker; raise `pybreaker.CircuitBreakerError` when refused."""
        token = f"call-{os.getpid()}-{threading.get_ident()}-{next(self._tokens)}"
        if self.admit(token) is Admission.REFUSE:
            raise pybreaker.CircuitBreakerError(f"circuit {self.name} is open")
        for listener in self.listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            if self.counts(exc):
                self.record_failure(token, exc)
            else:
                self.record_success(token)
            raise
        self.record_success(token)
        return result

    def open(self) -> bool:
        """Trip now, as if ``fail_max`` had been reached."""
        changes: Transitions = []
        with self.shared.transaction() as f:
            if f.state != State.OPEN:
                self._trip(f, changes)
        self._announce(changes)
        return True

    def close(self) -> None:
        """Close now and forget the failures."""
        changes: Transitions = []
        with self.shared.transaction() as f:
            if f.state != State.CLOSED:
                self._close(f, changes)
        self._announce(changes)

    def half_open(self) -> None:
        """End the open period now, so the next task is the trial (forced open stays)."""
        with self.shared.transaction() as f:
            if f.state == State.OPEN:
                f.open_until = self._clock()
