"""The shared breaker's promises, checked after every step of arbitrary interleavings.

Several real forked processes share one breaker page and one fake clock (shared memory, so
clock jumps are a rule). Each rule is something that happens in a worker: a task is
admitted (claiming the trial or not), passes the consumer's gate and is discarded by Celery,
succeeds, fails, ends without a verdict, starts and finishes running as the trial, time
passes, a process is SIGKILLed idle or in the middle of a transaction. After every step: at
most one live trial claim; a success of a claimed trial closes; a discarded delivery never
drops another delivery's claim; nothing is stuck; no counter is negative; the page decodes;
no lock is left held.

Default profile: a quick run for ``make test``. ``HYPOTHESIS_PROFILE=nightly``: many more.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from celery.exceptions import InvalidTaskError
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from circuitgate.breaker import Admission, SharedCircuitBreaker, TrialTaken
from circuitgate.gate import CLAIMED_HERE, _gate_strategy
from circuitgate.settings import Settings
from circuitgate.shared_state import CLAIMS_KEPT, BreakerFields, Hint, SharedBreakerState, State
from tests.profiles import property_settings

fork = multiprocessing.get_context("fork")

SETTINGS = Settings(
    fail_max=2,
    reset_timeout=10,
    backoff_multiplier=2,
    max_reset_timeout=40,
    jitter=0.5,
    trial_timeout=30,
    window_size=3,  # a full window of successes, where a success only counts, comes often
    min_calls=3,
    slow_call_seconds=5,
    slow_call_rate_threshold=0.6,  # two slow calls of the last three
)
SLOW = 2 * SETTINGS.slow_call_seconds  # fake seconds a slow call takes
BEAT = SETTINGS.trial_timeout / 4
"""Fake seconds between heartbeats of a running trial (its thread's interval)."""
WORKERS = 3
TOKENS = st.sampled_from(["a", "b", "c", "d", "ü" * 40, "ü" * 39 + "x"])


class DeviceFault(Exception):
    pass


# -- the worker processes ----------------------------------------------------------------


class Delivery:
    """A task message as the consumer's gate reads it (protocol 2: the fields in headers)."""

    def __init__(self, token: str, runs_now: bool) -> None:
        self.delivery_info: dict[str, Any] = {"routing_key": "celery"}
        self.headers = {"id": token} if runs_now else {"id": token, "eta": "2030-01-01T00:00"}
        self.payload = None
        self.delivery_tag = None

    def reject_log_error(self, *args: Any, **kwargs: Any) -> None:
        """Refused at the gate: back to the queue (nothing to do here)."""


def _discarded(message: Any, *args: Any) -> None:
    raise InvalidTaskError("Task keyword arguments is not a mapping")


def _discard(breaker: SharedCircuitBreaker, token: str, runs_now: bool) -> bool:
    """A delivery passes the real gate and Celery's strategy discards it; whether the gate
    saw it claim the trial."""
    gated = _gate_strategy(
        _discarded, SimpleNamespace(only=breaker), (), None, buckets={}, task="app.task"
    )
    message = Delivery(token, runs_now)
    with contextlib.suppress(InvalidTaskError):
        gated(message, None, None, None)
    return bool(message.delivery_info.get(CLAIMED_HERE))


def _serve(breaker: SharedCircuitBreaker, conn: multiprocessing.connection.Connection) -> None:
    """Run the parent's commands against the shared breaker, one at a time."""
    running: contextlib.ExitStack | None = None
    while True:
        command, token, flag = conn.recv()
        if command == "admit":
            admission, claimed = breaker.admit_delivery(token, claim=flag)
            conn.send((admission.value, claimed))
        elif command == "discard":
            conn.send(_discard(breaker, token, runs_now=flag))
        elif command == "success":
            conn.send(breaker.record_success(token))
        elif command == "slow_success":
            conn.send(breaker.record_success(token, started=breaker.clock() - SLOW))
        elif command == "failure":
            conn.send(breaker.record_failure(token, DeviceFault()))
        elif command == "release":
            conn.send(breaker.release(token))
        elif command == "start":
            try:
                context = breaker.trial_running(token)
            except TrialTaken:  # handed back: another run of the trial holds the claim
                conn.send(False)
                continue
            running = contextlib.ExitStack()
            running.enter_context(context)
            conn.send(not isinstance(context, contextlib.nullcontext))
        elif command == "pid":
            conn.send(os.getpid())
        elif command == "finish":
            if running is not None:
                running.close()
            running = None
            conn.send(None)
        elif command == "beat":
            conn.send(breaker.heartbeat(token))
        elif command == "die":  # pause inside the next transaction until SIGKILLed
            breaker.shared.update = _paused(breaker.shared, conn)  # type: ignore[method-assign]
            {"admit": breaker.admit, "success": breaker.record_success}.get(
                flag, lambda t: breaker.record_failure(t, DeviceFault())
            )(token)


def _paused(shared: SharedBreakerState, conn: multiprocessing.connection.Connection) -> Any:
    real = shared.update

    def update(body: Callable[[BreakerFields], Any]) -> Any:
        def body_then_pause(fields: BreakerFields) -> Any:
            result = body(fields)
            conn.send("inside")  # the body ran; the result is not yet published
            signal.pause()
            return result

        return real(body_then_pause)

    return update


@dataclasses.dataclass
class Worker:
    process: Any
    conn: multiprocessing.connection.Connection
    trial: str | None = None
    """The trial this worker is running (inside `trial_running`, beating)."""

    def ask(self, command: str, token: str = "", flag: Any = None) -> Any:
        self.conn.send((command, token, flag))
        assert self.conn.poll(20), f"worker {self.process.pid} did not answer {command}"
        return self.conn.recv()


def _lock_is_free(shared: SharedBreakerState) -> bool:
    try:
        fcntl.lockf(shared._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.lockf(shared._fd, fcntl.LOCK_UN)
    return True


# -- the machine -------------------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = fork.RawValue(ctypes.c_double, 1000.0)
        self.breaker = SharedCircuitBreaker(
            SETTINGS,
            clock=self._clock,
            wall_clock=self._clock,
            rand=lambda: 0.5,
            heartbeat_interval=3600,  # real seconds: heartbeats are driven by the rules
        )
        self.pool: list[Worker] = []
        self.claims: list[str | None] = []
        """Tokens that claimed the trial since the last trip or close, oldest first (None:
        released since)."""
        self.trial: str | None = None
        """The token holding the trial claim now, as the machine saw it claimed."""
        self.seen = (0, State.CLOSED)

    def _clock(self) -> float:
        return float(self.now.value)

    def _spawn(self) -> Worker:
        parent, child = fork.Pipe()
        process = fork.Process(target=_serve, args=(self.breaker, child), daemon=True)
        process.start()
        child.close()
        worker = Worker(process, parent)
        self.pool.append(worker)
        return worker

    def teardown(self) -> None:
        for worker in self.pool:
            worker.process.kill()
            worker.process.join(10)
        self.breaker.shared.close()

    @initialize(failures=st.integers(0, SETTINGS.fail_max), half_open=st.booleans())
    def start_workers(self, failures: int, half_open: bool) -> None:
        """Start the pool, mostly with the fault present: the interesting part is open."""
        for _ in range(WORKERS):
            self._spawn()
        for i in range(failures):
            self.failure(i, f"fault-{i}")
        if half_open:
            self.now.value += SETTINGS.reset_timeout

    def _worker(self, index: int) -> Worker:
        return self.pool[index % len(self.pool)]

    # -- what happens ------------------------------------------------------------------

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS, claim=st.booleans())
    def admit(self, index: int, token: str, claim: bool) -> None:
        before = self.breaker.snapshot()
        value, claimed = self._worker(index).ask("admit", token, claim)
        admission = Admission(value)
        after = self.breaker.snapshot()
        new_claim = after.trial_claims > before.trial_claims or (
            admission is Admission.TRIAL and before.state is not State.HALF_OPEN
        )
        assert claimed == new_claim, "the admission says it claimed exactly when it did"
        if not new_claim:
            return
        assert claim, "an unclaimed admission claimed the trial"
        assert admission is Admission.TRIAL
        if before.state is State.HALF_OPEN and self.trial is not None:
            # One live claim at a time: the claim replaced was overdue and not running.
            assert self._clock() >= before.open_until, "a second trial while the first is live"
            assert all(w.trial != self.trial for w in self.pool), "a running trial was replaced"
        self.claims.append(token)
        self.trial = token

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS, runs_now=st.booleans())
    def a_delivery_is_discarded(self, index: int, token: str, runs_now: bool) -> None:
        """Celery's strategy discards a delivery the gate let through (an invalid body), maybe
        a second delivery of the trial's own id: only a claim it took itself goes with it."""
        before = self.breaker.snapshot()
        held = before.state is State.HALF_OPEN and self._clock() < before.open_until
        claimed = self._worker(index).ask("discard", token, runs_now)
        after = self.breaker.snapshot()
        if claimed and not held:
            assert after.trial_id is None, "a claim taken and discarded is given back"
        else:  # a live claim is some other delivery's, even one of the same task id
            assert (after.state, after.trial_id, after.open_until) == (
                before.state,
                before.trial_id,
                before.open_until,
            ), "a discarded delivery dropped another delivery's claim"

    @precondition(lambda self: self.trial is not None)
    @rule(index=st.integers(0, WORKERS - 1), runs_now=st.booleans())
    def a_second_delivery_of_the_trial_is_discarded(self, index: int, runs_now: bool) -> None:
        assert self.trial is not None
        self.a_delivery_is_discarded(index, self.trial, runs_now)

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS)
    def success(self, index: int, token: str) -> None:
        before = self.breaker.snapshot()
        quiet = self.breaker.shared.hints() & Hint.QUIET_SUCCESS
        self._worker(index).ask("success", token)
        if quiet:  # counted without the lock: exactly what the transaction would have done
            after = self.breaker.snapshot()
            assert after.successes_total == before.successes_total + 1
            assert dataclasses.replace(after, successes_total=0, paused_seconds=0) == (
                dataclasses.replace(before, successes_total=0, paused_seconds=0)
            ), "a quiet success changed more than the total"
        recent = self.claims[-CLAIMS_KEPT:]
        if token in recent and before.state in (State.OPEN, State.HALF_OPEN):
            assert self.breaker.snapshot().state is State.CLOSED, "a claimed trial's success"

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS)
    def slow_success(self, index: int, token: str) -> None:
        before = self.breaker.snapshot()
        self._worker(index).ask("slow_success", token)
        after = self.breaker.snapshot()
        assert after.successes_total == before.successes_total + 1
        if token in self.claims[-CLAIMS_KEPT:] and before.state in (State.OPEN, State.HALF_OPEN):
            assert after.state is State.OPEN and after.trips == before.trips + 1, "a slow trial"

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS)
    def failure(self, index: int, token: str) -> None:
        self._worker(index).ask("failure", token)

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS)
    def neutral(self, index: int, token: str) -> None:
        """A delivery of ``token`` ends without a verdict (its run here ends first, if any),
        or is discarded or revoked unrun."""
        worker = self._worker(index)
        if worker.trial == token:
            self.finish_running(index)
        before = self.breaker.snapshot()
        # A run the page names as the trial's, in another process (a run of an earlier
        # claim of the same id, since given up on, is no longer named).
        run_elsewhere = before.trial_runner not in (None, worker.process.pid)
        worker.ask("release", token)
        after = self.breaker.snapshot()
        assert (after.fail_counter, after.trips, after.successes_total, after.failures_total) == (
            before.fail_counter,
            before.trips,
            before.successes_total,
            before.failures_total,
        )
        if run_elsewhere and self.trial == token:
            assert (after.state, after.trial_id) == (before.state, before.trial_id), (
                "another delivery's end dropped a running trial's claim"
            )
            return
        self.claims = [None if claimed == token else claimed for claimed in self.claims]
        if self.trial == token:
            self.trial = None

    @precondition(lambda self: any(w.trial and w.trial == self.trial for w in self.pool))
    @rule(index=st.integers(0, WORKERS - 1))
    def another_delivery_of_the_running_trial_ends(self, index: int) -> None:
        """A second delivery of the running trial's id is discarded, revoked or ends neutral."""
        assert self.trial is not None
        others = [i for i, w in enumerate(self.pool) if w.trial != self.trial]
        if others:
            self.neutral(others[index % len(others)], self.trial)

    @rule(index=st.integers(0, WORKERS - 1), token=TOKENS)
    def start_running(self, index: int, token: str) -> None:
        worker = self._worker(index)  # two deliveries of one id may both run: a race
        if worker.trial is None and worker.ask("start", token):
            worker.trial = token

    @precondition(lambda self: self.trial is not None)
    @rule(index=st.integers(0, WORKERS - 1))
    def the_trial_starts_running(self, index: int) -> None:
        assert self.trial is not None
        self.start_running(index, self.trial)

    @precondition(lambda self: any(self.claims))
    @rule(
        index=st.integers(0, WORKERS - 1),
        data=st.data(),
        outcome=st.sampled_from(["success", "slow_success", "failure", "neutral"]),
    )
    def a_claimed_trial_reports(self, index: int, data: st.DataObject, outcome: str) -> None:
        """The current trial, or one replaced earlier in the period, ends at last."""
        token = data.draw(st.sampled_from([claimed for claimed in self.claims if claimed]))
        getattr(self, outcome)(index, token)

    @precondition(lambda self: any(c and c != self.trial for c in self.claims))
    @rule(index=st.integers(0, WORKERS - 1), data=st.data())
    def a_replaced_trial_succeeds_late(self, index: int, data: st.DataObject) -> None:
        """The long task whose claim was given up on finishes well after all (item 3)."""
        replaced = [claimed for claimed in self.claims if claimed and claimed != self.trial]
        self.success(index, data.draw(st.sampled_from(replaced)))

    @rule(index=st.integers(0, WORKERS - 1))
    def finish_running(self, index: int) -> None:
        worker = self._worker(index)
        worker.ask("finish")
        worker.trial = None

    @rule(seconds=st.floats(0, 2 * SETTINGS.trial_timeout))
    def time_passes(self, seconds: float) -> None:
        self._advance(seconds)

    @rule(seconds=st.floats(SETTINGS.trial_timeout, 20 * SETTINGS.max_reset_timeout))
    def clock_jumps(self, seconds: float) -> None:
        self._advance(seconds)

    @precondition(lambda self: self.trial is not None)
    @rule()
    def the_trial_times_out(self) -> None:
        """Time runs to the trial's deadline: a silent trial is then overdue, a running one
        is not (its heartbeat pushed the deadline on)."""
        self._advance(max(self.breaker.snapshot().open_until - self._clock(), 0.0))

    def _advance(self, seconds: float) -> None:
        """Time passes; every running trial's heartbeat fires every `BEAT`, as its thread."""
        left = seconds
        while left > 0:
            step = min(left, BEAT)
            self.now.value += step
            left -= step
            for worker in self.pool:
                if worker.trial is not None and not worker.ask("beat", worker.trial):
                    # Only a verdict or a release moves the claim on from a running trial.
                    assert worker.trial != self.trial, "a running trial lost its claim"

    @rule(
        index=st.integers(0, WORKERS - 1),
        settled=st.sampled_from(["counted", "released", "never"]),
        token=TOKENS,
    )
    def killed_idle(self, index: int, settled: str, token: str) -> None:
        """The OOM killer: whatever the process ran, its heartbeat stops with it. The main
        process then settles the delivery it ran (the trial, or any other, maybe one of the
        trial's id that never started as the trial): a counted failure, a release naming
        the dead pid (stopped, revoked, poison), or nothing ever (a leak)."""
        worker = self._worker(index)
        token = worker.trial or token
        pid = worker.process.pid
        worker.process.kill()
        worker.process.join(10)
        self.pool.remove(worker)
        self._spawn()
        if settled == "counted":
            self.breaker.record_failure(token, DeviceFault())
        elif settled == "released":
            before = self.breaker.snapshot()
            self.breaker.release(token, killed_pid=pid)
            after = self.breaker.snapshot()
            if before.trial_runner not in (None, pid):
                assert (after.state, after.trial_id) == (before.state, before.trial_id), (
                    "a killed process's settle dropped a live run's claim"
                )
            elif after.trial_id is None:
                self.claims = [None if c == token else c for c in self.claims]
                if self.trial == token:
                    self.trial = None

    @rule(
        index=st.integers(0, WORKERS - 1),
        token=TOKENS,
        operation=st.sampled_from(["admit", "success", "failure"]),
    )
    def killed_in_a_transaction(self, index: int, token: str, operation: str) -> None:
        worker = self._worker(index)
        before = self.breaker.snapshot()
        hints = self.breaker.shared.hints()
        # A flowing admit and a quiet success take no transaction: nothing to die in (a
        # quiet success may be counted before the kill).
        quiet = operation == "success" and bool(hints & Hint.QUIET_SUCCESS)
        worker.conn.send(("die", token, operation))
        if (hints & Hint.FLOWING and operation == "admit") or quiet:
            pass
        elif worker.conn.poll(20) and worker.conn.recv() == "inside":
            assert not _lock_is_free(self.breaker.shared), "inside, the lock is held"
        worker.process.kill()
        worker.process.join(10)
        assert _lock_is_free(self.breaker.shared), "the kernel released the dead holder's lock"
        after = self.breaker.snapshot()
        if quiet:
            assert after.successes_total - before.successes_total in (0, 1)
            after = dataclasses.replace(after, successes_total=before.successes_total)
        assert dataclasses.replace(after, paused_seconds=0) == dataclasses.replace(
            before, paused_seconds=0
        ), "a transaction that never returned published something"
        self.pool.remove(worker)
        self._spawn()

    # -- what always holds -------------------------------------------------------------

    @invariant()
    def the_page_decodes_and_no_counter_is_negative(self) -> None:
        snapshot = self.breaker.snapshot()  # raises if the page does not decode
        assert isinstance(snapshot.state, State)
        assert snapshot.trial_id is None or isinstance(snapshot.trial_id, str)
        for name in ("fail_counter", "trips", "consecutive_trips", "trial_claims",
                     "window_calls", "window_failures", "refused_total", "successes_total",
                     "failures_total", "trial_successes", "trial_failures"):  # fmt: skip
            assert getattr(snapshot, name) >= 0, name
        assert snapshot.window_failures <= snapshot.window_calls <= SETTINGS.window_size
        assert 0 <= snapshot.window_slow_calls <= snapshot.window_calls
        assert 0 <= snapshot.open_period <= SETTINGS.max_reset_timeout
        assert math.isfinite(snapshot.open_until)
        assert snapshot.paused_seconds >= 0
        if (snapshot.trips, snapshot.state) != self.seen:
            if snapshot.trips != self.seen[0] or snapshot.state is State.CLOSED:
                self.claims = []  # a verdict: a new half-open period starts from the next trip
                self.trial = None
            self.seen = (snapshot.trips, snapshot.state)

    @invariant()
    def the_hints_never_say_more_than_the_page(self) -> None:
        """A hot path trusts a hint bit without reading the page: it must hold of the live
        copy (a writer killed half way may leave a bit cleared, never one set)."""
        hints = self.breaker.shared.hints()
        snapshot = self.breaker.snapshot()
        quiet = snapshot.state is State.FORCED_CLOSED or (
            snapshot.state is State.CLOSED
            and snapshot.fail_counter == 0
            and snapshot.window_failures == 0
            and snapshot.window_slow_calls == 0
            and snapshot.window_calls == SETTINGS.window_size
        )
        assert not hints & Hint.FLOWING or snapshot.state.flowing
        assert not hints & Hint.QUIET_SUCCESS or quiet

    @invariant()
    def no_lock_is_left_held(self) -> None:
        assert _lock_is_free(self.breaker.shared)

    @invariant()
    def nothing_is_stuck(self) -> None:
        """On a copy of the page: with the fault gone (only successes from now on) and no
        heartbeat, it closes within max_reset_timeout + trial_timeout of fake time.

        "No heartbeat": every running trial has ended (or died). A running trial keeps the
        worker paused while it runs, but never longer than ``max_trial_seconds`` after it
        started (its heartbeat stops then: `test_breaker`'s hung-trial test), so from any
        state the breaker closes within max_trial_seconds + max_reset_timeout +
        trial_timeout."""
        # Fresh messages; and, with a trial claimed, only its own message, come back again
        # and again (a visibility timeout), as when it is the last one in the queue.
        self._closes_with([f"heal-{attempt}" for attempt in range(10)])
        if self.trial is not None:
            self._closes_with([self.trial] * 10)

    def _closes_with(self, messages: list[str]) -> None:
        start = self._clock()
        clock = [start]
        copy = SharedBreakerState()
        fields = self.breaker.shared.update(BreakerFields.from_buffer_copy)
        copy.update(
            lambda target: ctypes.memmove(
                ctypes.addressof(target), ctypes.addressof(fields), ctypes.sizeof(fields)
            )
        )
        healer = SharedCircuitBreaker(SETTINGS, shared=copy, clock=lambda: clock[0])
        try:
            for message in messages:
                if healer.admit(message) is Admission.REFUSE:
                    clock[0] = max(clock[0], healer.snapshot().open_until)
                    continue
                healer.record_success(message)
                if healer.snapshot().state is State.CLOSED:
                    break
            assert healer.snapshot().state is State.CLOSED, f"stuck, healed with {messages[0]}"
            assert clock[0] - start <= SETTINGS.max_reset_timeout + SETTINGS.trial_timeout
        finally:
            copy.close()


TestBreakerInvariants = BreakerMachine.TestCase
TestBreakerInvariants.settings = property_settings(
    quick=100, nightly=500, steps=(40, 60), suppress=(HealthCheck.filter_too_much,)
)
