"""The consumer's pulse: its status, liveness and change count under any order of stamps and
any passage of time, against a model that says what each must be."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from circuitgate.consumer_pulse import ConsumerPulse, ConsumerStatus, PulseReading, is_live, judge
from circuitgate.contract import ConsumerStatusName

STALL = 10.0
LIVENESS = 30.0


class PulseMachine(RuleBasedStateMachine):
    """Drive a pulse with a fake clock; the model keeps the first unanswered time per poll."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.pulse = ConsumerPulse(
            stall_seconds=STALL, liveness_seconds=LIVENESS, now=lambda: self.now
        )
        self.connection = ConsumerStatus.STARTING
        self.ticked_at: float | None = None
        self.waiting: dict[str, float] = {}
        self.changes = 0
        self.last_health = ConsumerStatus.STARTING

    @rule(seconds=st.floats(min_value=0, max_value=2 * LIVENESS))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def tick(self) -> None:
        self.pulse.tick()
        self.ticked_at = self.now

    @rule(key=st.sampled_from(["BRPOP", "a", "b"]))
    def asked(self, key: str) -> None:
        self.pulse.asked(key)
        self.waiting.setdefault(key, self.now)

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

    def expected(self, paused: bool) -> ConsumerStatus:
        if self.connection is not ConsumerStatus.CONSUMING:
            return self.connection
        loop_stuck = self.ticked_at is not None and self.now - self.ticked_at > STALL
        poll_stuck = any(self.now - since > STALL for since in self.waiting.values())
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
        assert self.pulse.live() is not (self.connection is ConsumerStatus.CONSUMING and stuck)

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
        assert reading.connection is self.connection
        if self.waiting:
            assert reading.unanswered_for == self.now - min(self.waiting.values())
        else:
            assert reading.unanswered_for is None


TestPulse = PulseMachine.TestCase


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
