"""A pybreaker circuit breaker whose state and transitions are shared by a worker's processes."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import logging
import math
import os
import random
import sys
import threading
import time
import types
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, NamedTuple, NoReturn, TypeVar, cast

import pybreaker
from celery.exceptions import Ignore, Reject, Retry

from .heartbeat import Heartbeat
from .settings import Settings
from .shared_state import (
    CLAIMS_KEPT,
    FAILURE_MESSAGE_SIZE,
    HANDED_BACK_KEPT,
    BreakerFields,
    BreakerSnapshot,
    Hint,
    SharedBreakerState,
    State,
    token_key,
    token_label,
)
from .storage import SharedMemoryStorage

__all__ = (
    "NEVER_COUNTED",
    "Admission",
    "Admitted",
    "SharedCircuitBreaker",
    "TrialTaken",
    "open_period",
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

_LOG_FLOAT_MAX = math.log(sys.float_info.max)

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
# Plain ints: an IntFlag operand would run enum's Python-level __rand__ on every task.
_FLOWING = int(Hint.FLOWING)
_QUIET_SUCCESS = int(Hint.QUIET_SUCCESS)


class Admission(enum.Enum):
    """What the breaker lets a task do."""

    RUN = "run"
    """The circuit is closed (or the caller did not claim the trial): run as usual."""
    TRIAL = "trial"
    """Run as the one half-open trial whose outcome closes or re-opens the circuit."""
    REFUSE = "refuse"
    """Do not run here: hand the message back to the queue."""


class TrialTaken(Exception):
    """The trial's task already runs elsewhere (a second delivery of its id): hand it back."""


class Admitted(NamedTuple):
    """An admission, and whether this very call took the trial's claim."""

    admission: Admission
    claimed: bool
    """True only for the call that claimed the trial, not for one asking again with the
    token that holds it: only the delivery that took a claim may give it back."""


_RUN = Admitted(Admission.RUN, claimed=False)
_REFUSE = Admitted(Admission.REFUSE, claimed=False)
_TRIAL_HELD = Admitted(Admission.TRIAL, claimed=False)


def failure_message(exc: BaseException) -> str:
    """What an exception says, on one line of printable characters, for people: whatever its
    ``__str__`` does (raise, return a multi-line dump), never more than a label's worth."""
    try:
        text = str(exc)
    except Exception:  # a hostile __str__ must not fail the failure path
        text = "<unprintable exception>"
    text = text[: 4 * FAILURE_MESSAGE_SIZE]
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def open_period(consecutive_trips: int, settings: Settings, rand: float) -> float:
    """Seconds to stay open: exponential in consecutive trips, capped, with jitter.

    ``rand`` is uniform in [0, 1); jitter spreads workers that tripped together so they
    do not send their trials in step. The growth is judged in logarithms first, so a worker
    that has tripped a thousand times in a row gets the cap, not an `OverflowError`.
    """
    exponent = max(consecutive_trips - 1, 0)
    growth = exponent * math.log(settings.backoff_multiplier)
    log_period = math.log(settings.reset_timeout) + growth
    if log_period >= math.log(settings.max_reset_timeout):
        capped = settings.max_reset_timeout
    elif growth < _LOG_FLOAT_MAX:  # exact for any sensible settings
        capped = settings.reset_timeout * settings.backoff_multiplier**exponent
    else:  # a tiny reset_timeout: the power alone would not fit a float
        capped = math.exp(log_period)
    return min(capped * (1 + settings.jitter * (2 * rand - 1)), settings.max_reset_timeout)


class SharedCircuitBreaker(pybreaker.CircuitBreaker):
    """One circuit for the whole worker: the main process and every pool child.

    It keeps pybreaker's face (``fail_max``, ``reset_timeout``, ``exclude``, listeners,
    ``current_state``, ``fail_counter``, ``call``, ``calling``, generators, the decorator,
    ``throw_new_error_on_trip``) over a `SharedMemoryStorage`, and replaces the parts that
    cannot work across processes: pybreaker's ``call()`` holds a per-process lock for the
    whole call (one task at a time under the threads pool) and moves between states in
    several unsynchronised steps. Here each decision is one short transaction on the shared
    page, and a call runs outside any lock; so listeners are called from any thread, without
    a lock, and must be thread-safe. Where circuitgate differs from pybreaker (one trial with
    a deadline, backoff, neutral outcomes) see docs/pybreaker-compatibility.md.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        shared: SharedBreakerState | None = None,
        name: str = "default",
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        exclude: Iterable[type[BaseException] | Callable[[BaseException], bool]] = (),
        throw_new_error_on_trip: bool = True,
        success_threshold: int = 1,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        heartbeat_interval: float | None = None,
    ) -> None:
        self._check_success_threshold(success_threshold)
        if heartbeat_interval is not None and not 0 < heartbeat_interval < math.inf:
            raise ValueError(  # NaN or <= 0 would make the heartbeat thread spin
                f"heartbeat_interval={heartbeat_interval!r} is invalid: allowed is a finite"
                " number > 0"
            )
        self.settings = settings
        self.shared = shared or SharedBreakerState()
        self.shared.set_quiet_success(self._quiet_success)
        excluded: list[Any] = [*settings.ignore_exceptions, *exclude]
        if settings.count_exceptions:
            counted = settings.count_exceptions
            excluded.append(lambda exc: not isinstance(exc, counted))
        super().__init__(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout,
            exclude=excluded,
            listeners=list(listeners),
            state_storage=SharedMemoryStorage(self.shared),
            name=name,
            throw_new_error_on_trip=throw_new_error_on_trip,
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._rand = rand
        self._heartbeat_interval = heartbeat_interval
        self._tokens = itertools.count()
        self.polls = 0
        """Times this process asked `fetch_allowed` (the consumer's polls, in the main process)."""

    # -- settings that pybreaker lets callers change ---------------------------------------

    @property
    def fail_max(self) -> int:
        return self.settings.fail_max

    @fail_max.setter
    def fail_max(self, number: int) -> None:
        """Takes effect at once, in this process only (like pybreaker, per instance)."""
        self.settings = dataclasses.replace(self.settings, fail_max=number)

    @property
    def reset_timeout(self) -> float:
        return self.settings.reset_timeout

    @reset_timeout.setter
    def reset_timeout(self, timeout: float) -> None:
        """Takes effect from the next trip decided in this process (set it before the fork)."""
        if isinstance(timeout, int | float) and timeout > self.settings.max_reset_timeout:
            raise ValueError(
                f"reset_timeout={timeout!r} is above max_reset_timeout="
                f"{self.settings.max_reset_timeout!r}; raise circuitgate_max_reset_timeout first"
            )
        self.settings = dataclasses.replace(self.settings, reset_timeout=timeout)

    @property
    def success_threshold(self) -> int:
        return 1

    @success_threshold.setter
    def success_threshold(self, threshold: int) -> None:
        self._check_success_threshold(threshold)

    @staticmethod
    def _check_success_threshold(threshold: int) -> None:
        if threshold != 1:
            raise ValueError(
                f"success_threshold={threshold!r} is not supported: circuitgate lets one"
                " trial run per half-open period, and its success closes the circuit"
            )

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> BreakerSnapshot:
        """Everything the breaker knows, read consistently."""
        return self.shared.snapshot()

    def clock(self) -> float:
        """Now on the breaker's monotonic clock, which a call's ``started`` is read from."""
        return self._clock()

    @property
    def state(self) -> pybreaker.CBStateType:
        """The current state, without pybreaker's side effects on a cached state object."""
        return self._create_new_state(self.current_state)

    @state.setter
    def state(self, name: str) -> None:
        {"open": self.open, "closed": self.close, "half-open": self.half_open}[name]()

    def flowing(self) -> bool:
        """Whether the circuit is closed or forced closed now: one word, the first thing
        every per-task path asks, since then the breaker has nothing more to say."""
        return bool(self.shared.hints() & _FLOWING)

    def fetch_allowed(self) -> bool:
        """Whether the consumer may fetch now, counted as a poll (`polls`): runs on every one."""
        self.polls += 1
        return self.may_fetch()

    def may_fetch(self) -> bool:
        """Whether fetching is allowed now, uncounted (a look that is no poll): one shared
        read, one clock.

        Open: not until the open period ends. Half-open: not while the trial is out, unless
        it is overdue (``open_until`` holds the trial's deadline then, pushed on while the
        trial runs). Forced open: never (``open_until`` is infinite).
        """
        if self.shared.hints() & _FLOWING:
            return True
        state, open_until = self.shared.gate_view()
        return state.flowing or self._clock() >= open_until

    def is_system_error(self, exception: BaseException) -> bool:
        """pybreaker's rule (``exclude``), and Celery's control flow never counts."""
        return not isinstance(exception, NEVER_COUNTED) and super().is_system_error(exception)

    def counts(self, exc: BaseException) -> bool:
        """Whether this exception is evidence that the worker is broken."""
        return self.is_system_error(exc)

    # -- deciding ------------------------------------------------------------------------

    def admit(self, token: str, *, claim: bool = True) -> Admission:
        """Decide whether the task identified by ``token`` may run on this worker now.

        Asking again with the same token gives the same answer, so the main process can
        claim the trial when a message arrives and the pool child confirm it.

        ``claim=False`` never claims the trial: RUN when flowing, REFUSE during the open
        period (counted as refused), TRIAL if ``token`` already is the trial, and RUN where
        it would have claimed the trial. It is for a message that will not run now (an ETA
        or countdown): the caller lets it wait unclaimed and admits it again, with
        ``claim=True``, when it really runs, so a waiting message never holds the worker
        paused for ``trial_timeout``.
        """
        return self.admit_delivery(token, claim=claim).admission

    def admit_delivery(self, token: str, *, claim: bool = True) -> Admitted:
        """`admit`, also saying whether this call took the trial's claim.

        For the consumer's gate: two deliveries of one task id (a redelivery, a duplicate
        publish) both hear TRIAL, and only the one that claimed may release the claim if
        Celery then discards it.
        """
        if self.shared.hints() & _FLOWING:
            return _RUN
        state, open_until = self.shared.gate_view()
        if state.flowing:
            return _RUN
        now = self._clock()
        if state is not State.HALF_OPEN and now < open_until:
            self.shared.update(_count_refused)
            return _REFUSE
        changes: Transitions = []
        admitted = self.shared.update(lambda f: self._admit(f, token, now, changes, claim=claim))
        self._announce(changes)
        return admitted

    def _admit(
        self, f: BreakerFields, token: str, now: float, changes: Transitions, *, claim: bool
    ) -> Admitted:
        if State(f.state).flowing:
            return _RUN
        key = token_key(token)
        if f.state == State.HALF_OPEN and f.trial_key == key:
            if _run_named(f) and now < f.open_until:  # another delivery of it runs as the trial
                f.refused_total += 1
                return _REFUSE
            _clear_runners(f)  # a run gone silent (hung past max_trial_seconds) holds nothing
            return _TRIAL_HELD
        if now >= f.open_until:  # the open period is over, or the trial's owner went silent
            if not claim:
                return _RUN
            if f.state == State.OPEN:
                changes.append((State.OPEN, State.HALF_OPEN))
            f.state = State.HALF_OPEN
            f.success_counter = 0
            f.trial_key = key
            _clear_runners(f)
            f.trial_id = token_label(token)
            _remember_claim(f, key)
            f.claims += 1
            f.open_until = now + self.settings.trial_timeout
            return Admitted(Admission.TRIAL, claimed=True)
        f.refused_total += 1
        return _REFUSE

    def trial_running(self, token: str) -> contextlib.AbstractContextManager[None]:
        """Wrap the run of the task ``token``: if it is the trial, keep its claim while it runs.

        The trial's deadline (``trial_timeout``) is pushed on every quarter of it by a
        heartbeat thread, so however long a healthy trial runs, no other task is claimed as
        the trial and the consumer stays paused, in every process; if this process dies the
        heartbeat stops and the claim lapses. A trial that hangs keeps it no longer than
        ``max_trial_seconds`` from here: Celery sets no time limit by default, and a wedged
        driver call must not pause the worker forever. For any other task (the common case)
        this is one shared read and no thread.
        """
        if self.shared.hints() & _FLOWING:
            return contextlib.nullcontext()  # no trial while closed
        state, key = self.shared.trial_view()
        if state is not State.HALF_OPEN or key != token_key(token):
            return contextlib.nullcontext()
        not_after = self._clock() + self.settings.max_trial_seconds
        if not self._start_run(token, not_after):
            return contextlib.nullcontext()  # no longer the trial, or ``not_after`` passed
        interval = self._heartbeat_interval or self.settings.trial_timeout / 4
        beat = Heartbeat(
            lambda: self.heartbeat(token, not_after=not_after),
            interval,
            name=f"circuitgate-trial-{self.name}",
        )
        return self._held_while_running(token, beat)

    @contextlib.contextmanager
    def _held_while_running(self, token: str, beat: Heartbeat) -> Iterator[None]:
        try:
            with beat:
                yield
        finally:  # the heartbeat has stopped: the run no longer holds the claim
            self._end_run(token)

    def _start_run(self, token: str, not_after: float) -> bool:
        """The trial ``token`` starts running in this process and thread: named on the page,
        and its deadline pushed on. `TrialTaken` if another run of it holds the claim (two
        deliveries of one id admitted at once): the caller hands this one back."""
        key = token_key(token)
        now = self._clock()
        me = (os.getpid(), threading.get_ident())

        def start(f: BreakerFields) -> bool:
            if f.state != State.HALF_OPEN or f.trial_key != key or now >= not_after:
                return False
            if _run_named(f):  # raised inside: the page stays as it was
                raise TrialTaken(f"circuit {self.name}: trial {token} runs elsewhere")
            f.runner_pid, f.runner_thread = me
            f.open_until = max(f.open_until, min(now + self.settings.trial_timeout, not_after))
            return True

        return self.shared.update(start)

    def _end_run(self, token: str) -> None:
        key = token_key(token)
        me = (os.getpid(), threading.get_ident())

        def end(f: BreakerFields) -> None:
            if f.trial_key == key and (f.runner_pid, f.runner_thread) == me:
                _clear_runners(f)

        self.shared.update(end)

    def heartbeat(self, token: str, *, not_after: float = math.inf) -> bool:
        """Push the running trial's deadline a full ``trial_timeout`` on, but not past
        ``not_after``; False if ``token`` is no longer the trial (it was given up on, or the
        circuit moved on) or ``not_after`` has come, so the heartbeat stops."""
        key = token_key(token)
        now = self._clock()

        def push(f: BreakerFields) -> bool:
            if f.state != State.HALF_OPEN or f.trial_key != key:
                return False
            f.open_until = max(f.open_until, min(now + self.settings.trial_timeout, not_after))
            return now < not_after

        return self.shared.update(push)

    def record_success(self, token: str, *, started: float | None = None) -> None:
        """A task ran to the end. Any trial claimed since the last trip closes the circuit.

        Closed with nothing to forget (no failures in a row, a full window without any), as
        on nearly every task of a healthy worker, it only counts: no lock, no copy. Either
        way the call, and how long it ran since ``started`` (this breaker's clock), is noted
        as task-time evidence. A call slower than ``slow_call_seconds`` is a slow call
        (Resilience4j's rule): it counts toward ``slow_call_rate_threshold``, and a trial
        that slow does not close the circuit but opens it again.
        """
        ended = self._clock()
        seconds = None if started is None else ended - started
        slow = self._slow(seconds)
        if not slow and self.shared.hints() & _QUIET_SUCCESS:
            self.shared.add_success(ended, seconds)
        else:
            changes: Transitions = []

            def succeed(f: BreakerFields) -> None:
                f.successes_total += 1
                if self._claimed_trial(f, token):
                    if slow:
                        f.trial_failures += 1
                        self._trip(f, changes)
                    else:
                        f.trial_successes += 1
                        self._close(f, changes)
                elif f.state == State.CLOSED:
                    f.fail_counter = 0
                    self._push_outcome(f, failed=False, slow=slow)
                    if slow and self._slow_rate_exceeded(f):
                        self._trip(f, changes)

            self.shared.update(succeed)
            self.shared.note_call(ended, seconds, failed=False)
            self._announce(changes)
        for listener in self.listeners:
            listener.success(self)

    def record_failure(
        self, token: str, exc: BaseException, *, started: float | None = None
    ) -> bool:
        """A task failed in a way that counts against the worker; True if that tripped it.
        Noted as task-time evidence like a success (`record_success`)."""
        ended = self._clock()
        seconds = None if started is None else ended - started
        slow = self._slow(seconds)
        kind = type(exc).__name__
        message = failure_message(exc) if self.settings.expose_failure_messages else None
        at = self._wall_clock()
        changes: Transitions = []

        def fail(f: BreakerFields) -> None:
            f.failures_total += 1
            f.note_failure(kind, message, at)
            if self._claimed_trial(f, token):
                f.trial_failures += 1
                f.fail_counter += 1  # as pybreaker: a failed trial is one more failure
                self._trip(f, changes)
            elif State(f.state).flowing:
                f.fail_counter += 1
                self._push_outcome(f, failed=True, slow=slow)
                tripped = (
                    f.fail_counter >= self.fail_max
                    or self._rate_exceeded(f)
                    or self._slow_rate_exceeded(f)
                )
                if tripped and f.state == State.CLOSED:  # forced closed never trips
                    self._trip(f, changes)
            # Failures of tasks that started before the trip change nothing more.

        self.shared.update(fail)
        self.shared.note_call(ended, seconds, failed=True)
        for listener in self.listeners:  # as pybreaker: the failure, then the state change
            listener.failure(self, exc)
        self._announce(changes)
        return bool(changes)

    def release(self, token: str, *, killed_pid: int | None = None) -> None:
        """The task ended without a verdict: neither success nor failure.

        For outcomes that say nothing about the worker (Celery's Retry, Reject and Ignore,
        excluded exceptions, a revoked task, a poison message). Counters stay as they are
        (the run of failures goes on); if ``token`` holds the trial, the claim is dropped
        and the next task tries at once, unless a run of it is still going on (this was a
        discarded, revoked or second delivery of the trial's id): the claim is that run's.
        ``killed_pid``: the pool process that ran this delivery was killed, so a run of the
        trial it was named for is gone with it.
        """
        key = token_key(token)
        changes: Transitions = []

        def drop(f: BreakerFields) -> None:
            if killed_pid is not None and f.runner_pid == killed_pid:
                _clear_runners(f)
            if f.trial_key == key and _run_named(f):
                return
            _forget_claim(f, key)
            if f.state == State.HALF_OPEN and f.trial_key == key:
                changes.append((State.HALF_OPEN, State.OPEN))
                f.state = State.OPEN
                f.trial_key = 0
                f.trial_id = b""
                f.open_until = self._clock()

        self.shared.update(drop)
        self._announce(changes)

    def force(self, state: State | None) -> None:
        """Hold the circuit open or closed by hand, or (None) give it back to the rules.

        Forced open drains the worker for maintenance: nothing is fetched and whatever
        arrives goes back to the queue. Back to automatic starts closed, with no history.
        """
        if state not in (None, State.FORCED_OPEN, State.FORCED_CLOSED):
            raise ValueError(f"cannot force {state!r}: only FORCED_OPEN or FORCED_CLOSED")
        changes: Transitions = []

        def force(f: BreakerFields) -> None:
            if state is State.FORCED_OPEN and f.state != State.FORCED_OPEN:
                changes.append((State(f.state), State.FORCED_OPEN))
                f.state = State.FORCED_OPEN
                self._forget_trials(f)
                f.opened_at = self._wall_clock()
                f.open_until = float("inf")
                f.probe_due = f.probe_until = 0.0
            elif state is State.FORCED_CLOSED and f.state != State.FORCED_CLOSED:
                self._close(f, changes)
                changes[-1] = (changes[-1][0], State.FORCED_CLOSED)
                f.state = State.FORCED_CLOSED
            elif state is None and f.state != State.CLOSED:
                self._close(f, changes)

        self.shared.update(force)
        self._announce(changes)

    def note_handed_back(self, delivery: str) -> None:
        """Count a message this worker gave back to the queue after a counted failure, and
        remember ``delivery`` (a task id and its delivery number) as handed back."""
        key = token_key(delivery)

        def count(f: BreakerFields) -> None:
            f.handed_back[f.handed_back_total % HANDED_BACK_KEPT] = key
            f.handed_back_total += 1

        self.shared.update(count)

    def was_handed_back(self, delivery: str) -> bool:
        """Whether a process of this worker handed ``delivery`` back lately."""
        key = token_key(delivery)
        return self.shared.read(lambda f: key in f.handed_back)

    # -- transitions (inside `SharedBreakerState.update`) ----------------------------------------

    def _quiet_success(self, f: BreakerFields) -> bool:
        """Whether a success would change nothing but ``successes_total`` (`record_success`)."""
        if f.state == State.FORCED_CLOSED:
            return True
        return (
            f.state == State.CLOSED
            and f.fail_counter == 0
            and f.window_failures == 0
            and f.window_slow == 0
            and f.window_len == self.settings.window_size
        )

    @staticmethod
    def _claimed_trial(f: BreakerFields, token: str) -> bool:
        """Whether ``token`` was claimed as a trial since the last trip, and may give a verdict."""
        if f.state not in (State.OPEN, State.HALF_OPEN) or not f.claims:
            return False
        return token_key(token) in f.claimed

    def _trip(self, f: BreakerFields, changes: Transitions) -> None:
        changes.append((State(f.state), State.OPEN))
        self._open_again(f)

    def _open_again(self, f: BreakerFields) -> None:
        """A trip's bookkeeping (also a failed probe's, which changes no state)."""
        f.state = State.OPEN
        f.trips += 1
        f.consecutive_trips += 1
        f.success_counter = 0
        self._forget_trials(f)
        f.open_period = open_period(f.consecutive_trips, self.settings, self._rand())
        self._start_open_period(f)
        self._clear_window(f)

    def _start_open_period(self, f: BreakerFields) -> None:
        """From now, for ``open_period``; with a probe, fetching waits for it as well. A probe
        already running (``open()`` by hand meanwhile) keeps its deadline: its verdict
        answers for the new period too, so no second probe starts beside it."""
        f.opened_at = self._wall_clock()
        f.open_until = self._clock() + f.open_period
        if self.settings.probe is not None:
            f.probe_due, f.open_until = f.open_until, math.inf

    def _close(self, f: BreakerFields, changes: Transitions) -> None:
        changes.append((State(f.state), State.CLOSED))
        f.state = State.CLOSED
        f.fail_counter = 0
        f.consecutive_trips = 0
        self._forget_trials(f)
        f.opened_at = 0.0
        f.open_until = 0.0
        f.probe_due = f.probe_until = 0.0
        self._clear_window(f)

    @staticmethod
    def _forget_trials(f: BreakerFields) -> None:
        f.trial_key = 0
        _clear_runners(f)
        f.trial_id = b""
        f.claims = 0
        for slot in range(CLAIMS_KEPT):
            f.claimed[slot] = 0

    def _push_outcome(self, f: BreakerFields, *, failed: bool, slow: bool) -> None:
        """Into the window: bit 0 of an entry is a failure, bit 1 a slow call."""
        size = self.settings.window_size
        if f.window_len == size:
            evicted = f.window[f.window_pos]
            f.window_failures -= evicted & 1
            f.window_slow -= evicted >> 1
        else:
            f.window_len += 1
        f.window[f.window_pos] = int(failed) | int(slow) << 1
        f.window_failures += int(failed)
        f.window_slow += int(slow)
        f.window_pos = (f.window_pos + 1) % size

    def _rate_exceeded(self, f: BreakerFields) -> bool:
        threshold = self.settings.failure_rate_threshold
        if threshold is None or f.window_len < self.settings.min_calls:
            return False
        return f.window_failures / f.window_len >= threshold

    def _slow(self, seconds: float | None) -> bool:
        limit = self.settings.slow_call_seconds
        return limit is not None and seconds is not None and seconds > limit

    def _slow_rate_exceeded(self, f: BreakerFields) -> bool:
        if self.settings.slow_call_seconds is None or f.window_len < self.settings.min_calls:
            return False
        return f.window_slow / f.window_len >= self.settings.slow_call_rate_threshold

    @staticmethod
    def _clear_window(f: BreakerFields) -> None:
        f.window_len = f.window_pos = f.window_failures = f.window_slow = 0

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
                # What is left of it: none after a released trial, the next task tries.
                max(_period_end(snapshot) - self._clock(), 0.0) if new is State.OPEN else 0.0,
            )
            for listener in self.listeners:
                listener.state_change(
                    self,
                    self._create_new_state(_PYBREAKER_NAMES[old]),
                    self._create_new_state(_PYBREAKER_NAMES[new]),
                )

    # -- the probe before the trial (``circuitgate_probe``) --------------------------------

    def begin_probe(self) -> int | None:
        """Start the probe if one is due (the open period is over and none runs): its number,
        for `end_probe`; None when none is due. The circuit keeps refusing meanwhile."""
        snapshot = self.shared.snapshot()
        now = self._clock()
        if snapshot.state is not State.OPEN or not snapshot.probe_due or snapshot.probe_until:
            return None
        if now < snapshot.probe_due:
            return None

        def begin(f: BreakerFields) -> int | None:
            if f.state != State.OPEN or not f.probe_due or f.probe_until or now < f.probe_due:
                return None
            f.probe_until = now + self.settings.probe_timeout
            f.probes += 1
            return int(f.probes)

        return self.shared.update(begin)

    def probe_overdue(self) -> int | None:
        """The number of the probe that runs past its deadline, if one does."""
        state, until, number = self.shared.read(lambda f: (f.state, f.probe_until, f.probes))
        overdue = state == State.OPEN and until and self._clock() >= until
        return int(number) if overdue else None

    def end_probe(self, number: int, *, passed: bool) -> None:
        """Probe ``number`` passed (the next poll lets the half-open trial in) or failed (the
        circuit stays open another period, counted as a trip, as a failed trial would be). A
        probe that is not the one running any more (the circuit closed or was forced, or a
        later probe started) changes nothing."""
        now = self._clock()

        def end(f: BreakerFields) -> bool:
            if f.state != State.OPEN or f.probes != number or not f.probe_until:
                return False
            f.probe_until = 0.0
            if passed:
                f.probe_successes += 1
                f.open_until = max(now, f.probe_due)  # a period begun meanwhile runs out
                f.probe_due = 0.0
            else:
                f.probe_failures += 1
                self._open_again(f)
            return True

        if self.shared.update(end):
            snapshot = self.shared.snapshot()
            logger.log(
                logging.INFO if passed else logging.WARNING,
                "circuit %s: probe %s%s",
                self.name,
                "passed: the half-open trial may run" if passed else "failed",
                "" if passed else f"; open for another {snapshot.open_period:.1f}s",
            )

    # -- pybreaker's public face ---------------------------------------------------------

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` under the breaker, as pybreaker does.

        Refused: `pybreaker.CircuitBreakerError`. A counted failure that trips the circuit
        raises `pybreaker.CircuitBreakerError` from the original when
        ``throw_new_error_on_trip`` (the default), else the original. A generator is
        guarded until it is exhausted. Outcomes that do not count are neutral (`release`).
        """
        token = self._enter(func, *args, **kwargs)
        started = self._clock()
        try:
            with self.trial_running(token):
                result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle_error(token, exc, started)
            raise
        if isinstance(result, types.GeneratorType):
            return cast(T, self._guard_generator(token, result, started))
        self.record_success(token, started=started)
        return result

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """The body of a ``with`` block under the breaker, by the same rules as `call`."""
        token = self._enter(self.calling)
        started = self._clock()
        try:
            with self.trial_running(token):
                yield
        except BaseException as exc:
            self._settle_error(token, exc, started)
            raise
        self.record_success(token, started=started)

    def call_async(self, func: Any, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: pybreaker's Tornado path would bypass the shared trial and backoff rules."""
        raise NotImplementedError(
            "SharedCircuitBreaker.call_async is not supported: pybreaker runs Tornado"
            " coroutines under its own per-process rules, without circuitgate's single trial"
            " and backoff; await the coroutine inside `with breaker.calling():` instead"
        )

    def _enter(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        token = f"call-{os.getpid()}-{threading.get_ident()}-{next(self._tokens)}"
        if self.admit(token) is Admission.REFUSE:
            raise pybreaker.CircuitBreakerError(f"circuit {self.name} is open")
        for listener in self.listeners:
            listener.before_call(self, func, *args, **kwargs)
        return token

    def _settle_error(self, token: str, exc: BaseException, started: float) -> None:
        """Record ``exc``; raise `pybreaker.CircuitBreakerError` if it tripped the circuit."""
        if not self.counts(exc) or isinstance(exc, GeneratorExit):
            self.release(token)
        elif self.record_failure(token, exc, started=started) and self._throw_new_error_on_trip:
            raise pybreaker.CircuitBreakerError(
                f"circuit {self.name} opened: failures threshold reached or trial failed"
            ) from exc

    def _guard_generator(
        self, token: str, generator: Generator[Any, Any, T], started: float
    ) -> Generator[Any, Any, T]:
        try:
            with self.trial_running(token):  # the trial runs while it is consumed
                result = yield from generator
        except BaseException as exc:
            self._settle_error(token, exc, started)
            raise
        self.record_success(token, started=started)
        return result

    def open(self) -> bool:
        """Trip now, as if ``fail_max`` had been reached; pybreaker's return value."""
        changes: Transitions = []

        def trip(f: BreakerFields) -> None:
            if f.state != State.OPEN:
                self._trip(f, changes)
            else:  # as pybreaker: the open period starts again (no new trip is counted)
                self._start_open_period(f)

        self.shared.update(trip)
        self._announce(changes)
        return bool(self._throw_new_error_on_trip)

    def close(self) -> None:
        """Close now and forget the failures (as pybreaker, also when already closed)."""
        changes: Transitions = []

        def close(f: BreakerFields) -> None:
            if f.state != State.CLOSED:
                self._close(f, changes)
            f.fail_counter = 0
            self._clear_window(f)

        self.shared.update(close)
        self._announce(changes)

    def half_open(self) -> None:
        """Half-open now, as pybreaker does: the next task is the trial (forced states stay).

        No trial is claimed yet: the next `admit` claims it, by the usual single-trial rule.
        """
        changes: Transitions = []

        def half_open(f: BreakerFields) -> None:
            if f.state in (State.CLOSED, State.OPEN):
                changes.append((State(f.state), State.HALF_OPEN))
                f.state = State.HALF_OPEN
                f.trial_key = 0
                _clear_runners(f)
                f.trial_id = b""
                f.open_until = self._clock()
                f.probe_due = f.probe_until = 0.0  # by hand: no probe first

        self.shared.update(half_open)
        self._announce(changes)


def _period_end(snapshot: BreakerSnapshot) -> float:
    """When the open period ends: the probe's due time when one waits for it."""
    return snapshot.probe_due or snapshot.open_until


def _count_refused(f: BreakerFields) -> None:
    f.refused_total += 1


def _run_named(f: BreakerFields) -> bool:
    """Whether a run of the trial holds its claim (inside `trial_running`)."""
    return f.runner_pid != 0


def _clear_runners(f: BreakerFields) -> None:
    f.runner_pid = 0
    f.runner_thread = 0


def _remember_claim(f: BreakerFields, key: int) -> None:
    """Keep ``key`` among this half-open period's claims, oldest first: in the first empty
    slot, or, when all CLAIMS_KEPT are live, in place of the oldest."""
    live = [claim for claim in f.claimed if claim]
    if len(live) == CLAIMS_KEPT:
        live.pop(0)
    _store_claims(f, [*live, key])


def _forget_claim(f: BreakerFields, key: int) -> None:
    """Drop ``key`` from the claims, so its slot serves the next one."""
    _store_claims(f, [claim for claim in f.claimed if claim and claim != key])


def _store_claims(f: BreakerFields, live: list[int]) -> None:
    for slot in range(CLAIMS_KEPT):
        f.claimed[slot] = live[slot] if slot < len(live) else 0
