"""The consumer's pulse: its status, liveness and change count under any order of stamps and
any passage of time, against a model that says what each must be."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from circuitgate.consumer_pulse import ConsumerPulse, ConsumerStatus, PulseReading, is_live, judge
from circuitgate.contract import ConsumerStatusName
from tests.profiles import property_settings

STALL = 10.0
LIVENESS = 30.0


SECONDS = st.integers(0, int(2 * LIVENESS)).map(float) | st.floats(0, 2 * LIVENESS)
"""Whole seconds spread over the range (bounds and their neighbours are not all there is)."""


class PulseMachine(RuleBasedStateMachine):
    """Drive a pulse with a fake clock; the model keeps the first unanswered time per poll and
    the wait it asked for, the task running inside the loop, and whether shutdown began."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.pulse = ConsumerPulse(
            stall_seconds=STALL, liveness_seconds=LIVENESS, now=lambda: self.now
        )
        self.connection = ConsumerStatus.STARTING
        self.ticked_at: float | None = None
        self.waiting: dict[str, tuple[float, float]] = {}
        self.inline_since: float | None = None
        self.stopping = False
        self.changes = 0
        self.last_health = ConsumerStatus.STARTING

    @rule(seconds=SECONDS)
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def tick(self) -> None:
        self.pulse.tick()
        self.ticked_at = self.now

    @rule(seconds=SECONDS)
    def time_passes_while_the_loop_ticks(self, seconds: float) -> None:
        """The common case: a loop that ticks on, so only the polls can be stalled."""
        self.time_passes(seconds)
        self.tick()

    @rule(key=st.sampled_from(["BRPOP", "a", "b"]), wait=st.sampled_from([0, STALL, 3 * STALL]))
    def asked(self, key: str, wait: float) -> None:
        self.pulse.asked(key, wait=wait)
        self.waiting.setdefault(key, (self.now, wait))

    @rule()
    def task_began_inline(self) -> None:
        self.pulse.task_began_inline()
        self.inline_since = self.now

    @rule()
    def task_ended_inline(self) -> None:
        self.pulse.task_ended_inline()
        self.inline_since, self.ticked_at = None, self.now
        self.waiting = {key: (self.now, wait) for key, (_, wait) in self.waiting.items()}

    @rule()
    def shutdown_began(self) -> None:
        self.pulse.stopping()
        self.stopping = True

    @rule(key=st.sampled_from(["BRPOP", "a", "b"]))
    def answered(self, key: str) -> None:
        self.pulse.answered(key)
        self.waiting.pop(key, None)

    @rule()
    def connected(self) -> None:
        self.pulse.connected()
        self.connection, self.ticked_at = ConsumerStatus.CONSUMING, self.now
        self.waiting.clear()

    @rule(stopping=st.booleans())
    def disconnected(self, stopping: bool) -> None:
        self.pulse.disconnected(stopping=stopping)
        self.connection = ConsumerStatus.STOPPING if stopping else ConsumerStatus.DISCONNECTED
        self.waiting.clear()

    @property
    def connection_read(self) -> ConsumerStatus:
        return ConsumerStatus.STOPPING if self.stopping else self.connection

    def expected(self, paused: bool) -> ConsumerStatus:
        if self.connection_read is not ConsumerStatus.CONSUMING:
            return self.connection_read
        if self.inline_since is None:  # else busy running a task, not stuck
            loop_stuck = self.ticked_at is not None and self.now - self.ticked_at > STALL
            poll_stuck = any(self.now - (t + wait) > STALL for t, wait in self.waiting.values())
            if loop_stuck or poll_stuck:
                return ConsumerStatus.STALLED
        return ConsumerStatus.PAUSED if paused else ConsumerStatus.CONSUMING

    @invariant()
    def status_is_the_models(self) -> None:
        for paused in (False, True):
            assert self.pulse.status(paused=paused) is self.expected(paused)

    @invariant()
    def not_live_only_with_a_stuck_loop_while_connected(self) -> None:
        stuck = self.ticked_at is not None and self.now - self.ticked_at > LIVENESS
        stuck = stuck and self.inline_since is None
        assert self.pulse.live() is not (self.connection_read is ConsumerStatus.CONSUMING and stuck)

    @invariant()
    def changes_count_each_change_of_health_seen(self) -> None:
        health = self.expected(paused=False)
        if health is not self.last_health:
            self.changes += 1
            self.last_health = health
        assert self.pulse.changes() == self.changes
        assert self.pulse.changes() == self.changes  # a second look changes nothing

    @invariant()
    def a_reading_states_the_stamps(self) -> None:
        reading = self.pulse.read()
        assert reading.connection is self.connection_read
        if self.waiting:
            assert reading.unanswered_for == self.now - min(t for t, _ in self.waiting.values())
            due = min(t + wait for t, wait in self.waiting.values())
            assert reading.overdue_for == self.now - due
        else:
            assert reading.unanswered_for is reading.overdue_for is None
        if self.inline_since is not None:
            assert reading.inline_task_seconds == self.now - self.inline_since
            assert reading.active_tasks >= 1


TestPulse = PulseMachine.TestCase
TestPulse.settings = property_settings(quick=300, nightly=5000)


def test_the_statuses_are_the_contracts() -> None:
    assert set(ConsumerStatus) == set(ConsumerStatusName.__args__)  # type: ignore[attr-defined]


def test_a_paused_consumer_that_is_stalled_reads_stalled() -> None:
    reading = PulseReading(ConsumerStatus.CONSUMING, STALL + 1, None, 0, None)
    assert judge(reading, stall_seconds=STALL, paused=True) is ConsumerStatus.STALLED
    assert is_live(reading, liveness_seconds=LIVENESS)


def test_a_consumer_reconnecting_is_live_however_long_its_loop_waits() -> None:
    reading = PulseReading(ConsumerStatus.DISCONNECTED, 10 * LIVENESS, None, 0, None)
    assert is_live(reading, liveness_seconds=LIVENESS)
    assert judge(reading, stall_seconds=STALL, paused=False) is ConsumerStatus.DISCONNECTED
