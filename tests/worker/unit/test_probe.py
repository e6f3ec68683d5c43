"""The probe before the trial: the breaker's rules on a fake clock, an invariant searched by
hypothesis, and the probes that ship."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from circuitgate import probes
from circuitgate.breaker import Admission, SharedCircuitBreaker
from circuitgate.probe_step import run_probe
from circuitgate.settings import InvalidSetting, Settings, load_settings
from circuitgate.shared_state import BreakerSnapshot, State
from tests.profiles import property_settings

from .fakes import DeviceFault, FakeClock


def always() -> bool:
    return True


def make(clock: FakeClock, **overrides: Any) -> SharedCircuitBreaker:
    chosen = {"fail_max": 1, "reset_timeout": 10, "jitter": 0.0, "probe_timeout": 5, **overrides}
    settings = Settings(probe=always, **chosen)
    return SharedCircuitBreaker(settings, clock=clock, rand=lambda: 0.5, name="test")


def trip(breaker: SharedCircuitBreaker) -> None:
    assert breaker.admit("t") is Admission.RUN
    breaker.record_failure("t", DeviceFault())
    assert breaker.snapshot().state is State.OPEN


def test_the_trial_waits_for_a_probe_that_passes() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    assert breaker.begin_probe() is None  # the open period is not over
    clock.now += 10
    assert not breaker.fetch_allowed()  # over, but the probe comes first
    assert breaker.admit("early") is Admission.REFUSE
    number = breaker.begin_probe()
    assert number == 1 and breaker.begin_probe() is None  # one probe at a time
    assert not breaker.fetch_allowed() and breaker.admit("during") is Admission.REFUSE
    breaker.end_probe(1, passed=True)
    assert breaker.fetch_allowed()
    assert breaker.admit("trial") is Admission.TRIAL
    breaker.record_success("trial")
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.probe_successes, snapshot.probe_failures) == (
        State.CLOSED, 1, 0,
    )  # fmt: skip


def test_opening_by_hand_while_a_probe_runs_waits_for_that_probe() -> None:
    """pybreaker's ``open()`` starts a new period; the probe already running still answers
    for it, and a pass lets the trial in only when that period is over."""
    clock = FakeClock()
    breaker = make(clock, probe_timeout=60)
    trip(breaker)
    clock.now += 10
    assert breaker.begin_probe() == 1
    breaker.open()
    clock.now += 10
    assert breaker.begin_probe() is None  # no second probe beside the first
    clock.now -= 5
    breaker.end_probe(1, passed=True)
    assert not breaker.fetch_allowed()  # the period open() began runs 5 s more
    clock.now += 5
    assert breaker.fetch_allowed() and breaker.admit("trial") is Admission.TRIAL


def test_a_failed_probe_opens_another_period_without_a_message() -> None:
    clock = FakeClock()
    breaker = make(clock, backoff_multiplier=2)
    trip(breaker)
    for failed in range(1, 4):
        clock.now += breaker.snapshot().open_period
        number = breaker.begin_probe()
        assert number is not None
        breaker.end_probe(number, passed=False)
        snapshot = breaker.snapshot()
        assert snapshot.state is State.OPEN and snapshot.probe_failures == failed
        assert snapshot.trips == 1 + failed  # as a failed trial would count
        assert snapshot.open_period == 10 * 2**failed  # and back off as one
        assert breaker.begin_probe() is None and not breaker.fetch_allowed()
    assert breaker.snapshot().refused_total == 0  # no message was taken, none refused either


def test_a_probe_past_its_deadline_is_overdue_and_a_late_verdict_changes_nothing() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.now += 10
    number = breaker.begin_probe()
    assert number is not None and breaker.probe_overdue() is None
    clock.now += 5
    assert breaker.probe_overdue() == number
    breaker.end_probe(number, passed=False)
    breaker.end_probe(number, passed=True)  # the late answer of the timed-out probe
    assert not breaker.fetch_allowed() and breaker.snapshot().probe_successes == 0


def test_forcing_or_closing_drops_the_probe() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.now += 10
    number = breaker.begin_probe()
    assert number is not None
    breaker.close()
    breaker.end_probe(number, passed=False)
    assert breaker.snapshot().state is State.CLOSED
    trip(breaker)
    breaker.half_open()  # by hand: the next task is the trial, no probe first
    assert breaker.admit("trial") is Admission.TRIAL


class ProbeMachine(RuleBasedStateMachine):
    """Whatever happens, no message is let in after a trip until a probe has passed since."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        # A probe may outlive an open period (probe_timeout 30 s, periods from 10 s).
        self.breaker = make(
            self.clock, fail_max=2, backoff_multiplier=2, max_reset_timeout=40, probe_timeout=30
        )
        self.passed_since_trip = False
        self.started: list[int] = []
        self.tokens = 0
        self.by_hand_until = 0.0

    def token(self) -> str:
        self.tokens += 1
        return f"t{self.tokens}"

    @rule(seconds=st.floats(min_value=0, max_value=50))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(failed=st.booleans())
    def a_task_runs(self, failed: bool) -> None:
        token = self.token()
        before = self.breaker.snapshot()
        admission = self.breaker.admit(token)
        if admission is Admission.REFUSE:
            return
        if failed:
            self.breaker.record_failure(token, DeviceFault())
        else:
            self.breaker.record_success(token)
        self.follow(before)

    @rule()
    def begin(self) -> None:
        number = self.breaker.begin_probe()
        if number is not None:
            self.started.append(number)

    @rule()
    def opened_by_hand(self) -> None:
        """pybreaker's ``open()``: a new period, whatever runs; fetching waits it out."""
        self.breaker.open()
        self.by_hand_until = self.clock.now + self.breaker.snapshot().open_period

    @precondition(lambda self: self.started)
    @rule(data=st.data(), passed=st.booleans())
    def end(self, data: st.DataObject, passed: bool) -> None:
        number = data.draw(st.sampled_from(self.started))  # stale ones among them
        before = self.breaker.snapshot()
        self.breaker.end_probe(number, passed=passed)
        self.follow(before)

    def follow(self, before: BreakerSnapshot) -> None:
        """Since the last trip, has a probe passed? A pass says yes, a new trip no."""
        after = self.breaker.snapshot()
        if after.probe_successes > before.probe_successes:
            self.passed_since_trip = True
        if after.trips > before.trips:
            self.passed_since_trip = False

    @rule()
    def overdue(self) -> None:
        number = self.breaker.probe_overdue()
        if number is not None:
            self.breaker.end_probe(number, passed=False)

    @invariant()
    def nothing_comes_in_before_a_probe_passes(self) -> None:
        snapshot = self.breaker.snapshot()
        if snapshot.state is State.OPEN and not self.passed_since_trip:
            assert not self.breaker.fetch_allowed()
            assert self.breaker.admit("peek", claim=False) is Admission.REFUSE

    @invariant()
    def a_period_opened_by_hand_is_waited_out(self) -> None:
        """Not even a probe's pass cuts it short (later trips only open longer periods)."""
        if self.breaker.snapshot().state is State.OPEN and self.clock.now < self.by_hand_until:
            assert not self.breaker.fetch_allowed()

    @invariant()
    def a_probe_runs_only_while_open(self) -> None:
        snapshot = self.breaker.snapshot()
        if snapshot.probe_until:
            assert snapshot.state is State.OPEN


ProbeMachine.TestCase.settings = property_settings(quick=50, nightly=1000, steps=(40, 100))
TestProbeMachine = ProbeMachine.TestCase


def test_run_probe_turns_every_outcome_into_an_answer() -> None:
    def broken() -> None:
        raise DeviceFault("CUDA error: an illegal memory access was encountered")

    assert run_probe(always) == (True, "")
    assert run_probe(lambda: False) == (False, "returned False")
    assert run_probe(lambda: None) == (True, "")
    assert run_probe(broken) == (
        False, "DeviceFault: CUDA error: an illegal memory access was encountered",
    )  # fmt: skip


def test_the_command_probe_passes_on_exit_0_and_says_why_it_failed(tmp_path: Path) -> None:
    assert probes.command("true")()
    script = tmp_path / "smi"
    script.write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    script.chmod(0o755)
    with pytest.raises(probes.ProbeFailed, match="exited with 6: No devices were found"):
        probes.command(str(script))()
    with pytest.raises(probes.ProbeFailed, match="could not run"):
        probes.command(str(tmp_path / "missing"))()
    with pytest.raises(probes.ProbeFailed, match=r"did not finish within 0\.2 s"):
        probes.command("sleep", "5", timeout=0.2)()


def test_the_cuda_probe_without_torch_or_pynvml_cannot_tell_and_passes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = probes.importlib.util.find_spec

    def without_cuda_libraries(name: str, *args: Any) -> Any:
        return None if name in ("torch", "pynvml") else find_spec(name, *args)

    monkeypatch.setattr(probes.importlib.util, "find_spec", without_cuda_libraries)
    monkeypatch.setattr(probes, "_warned", [])  # said once per process: as if for the first time
    with caplog.at_level(logging.WARNING):
        assert probes.cuda_device(0)()
    assert "neither torch nor pynvml" in caplog.text


def test_the_probe_setting_is_a_callable_or_its_path() -> None:
    settings = load_settings({"circuitgate_probe": "circuitgate.probes.Command"})
    assert settings.probe is probes.Command
    probe = probes.command("nvidia-smi")
    assert load_settings({"circuitgate_probe": probe}).probe is probe
    for bad in ("circuitgate.probes.nothing", 42):
        with pytest.raises(InvalidSetting, match="circuitgate_probe="):
            load_settings({"circuitgate_probe": bad})
    assert dataclasses.replace(Settings(), probe=None).probe is None
