"""The /metrics exposition: read from the breakers' shared state when scraped, parsed back."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from circuitgate.breaker import Admission
from circuitgate.breaker_set import BreakerSet
from circuitgate.metrics import render_metrics
from circuitgate.settings import load_settings
from circuitgate.shared_state import State

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(render: Callable[[], bytes]) -> Samples:
    """One scrape, parsed by prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(render().decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def breakers() -> BreakerSet:
    return BreakerSet(
        load_settings(
            {"circuitgate_fail_max": 3, "circuitgate_breakers": {"gpu": {"queues": ["gpu"]}}}
        )
    )


def test_each_breaker_has_one_sample_per_state_and_only_its_current_state_is_one() -> None:
    subject = breakers()
    subject.get("gpu").force(State.FORCED_OPEN)
    samples = scrape(render_metrics(lambda: list(subject)))
    for breaker, current in (("default", "closed"), ("gpu", "forced_open")):
        states = {
            state.name.lower(): value(
                samples, "circuitgate_breaker_state", breaker=breaker, state=state.name.lower()
            )
            for state in State
        }
        assert states == {name: float(name == current) for name in states}


def test_metrics_read_the_snapshot_at_scrape_time() -> None:
    subject = breakers()
    render = render_metrics(lambda: list(subject))
    gpu = subject.get("gpu")
    before = scrape(render)
    for i in range(4):
        gpu.record_success(f"ok{i}")
    for i in range(2):
        gpu.record_failure(f"bad{i}", RuntimeError())
    gpu.open()
    gpu.record_failure("started-before-the-trip", RuntimeError())
    for i in range(5):
        gpu.admit(f"refused{i}")  # handed back unexecuted
    for _ in range(6):
        gpu.note_handed_back("t1")  # handed back after a counted failure
    after = scrape(render)
    grown = {
        ("circuitgate_calls_total", "outcome", "success"): 4,
        ("circuitgate_calls_total", "outcome", "failure"): 3,
        ("circuitgate_handed_back_messages_total", "reason", "open"): 5,
        ("circuitgate_handed_back_messages_total", "reason", "failed"): 6,
    }
    for (name, label, label_value), count in grown.items():
        labels = {"breaker": "gpu", label: label_value}
        assert (value(before, name, **labels), value(after, name, **labels)) == (0, count)
    assert value(after, "circuitgate_trips_total", breaker="gpu") == 1
    assert value(after, "circuitgate_consecutive_failures", breaker="gpu") == 2
    assert value(after, "circuitgate_breaker_state", breaker="gpu", state="open") == 1
    assert value(after, "circuitgate_trips_total", breaker="default") == 0


def test_trial_outcomes_are_counted_apart_from_other_calls() -> None:
    subject = breakers()
    render = render_metrics(lambda: list(subject))
    gpu = subject.get("gpu")
    gpu.open()
    for outcome in ("failure", "failure", "success"):
        gpu.half_open()
        assert gpu.admit(outcome) is Admission.TRIAL
        if outcome == "success":
            gpu.record_success(outcome)
        else:
            gpu.record_failure(outcome, RuntimeError())
    samples = scrape(render)
    assert value(samples, "circuitgate_trials_total", breaker="gpu", outcome="success") == 1
    assert value(samples, "circuitgate_trials_total", breaker="gpu", outcome="failure") == 2
    assert value(samples, "circuitgate_trips_total", breaker="gpu") == 3  # open() and two trials
    assert value(samples, "circuitgate_breaker_state", breaker="gpu", state="closed") == 1


def test_paused_seconds_include_the_pause_going_on_now_and_stop_when_it_ends() -> None:
    subject = breakers()
    render = render_metrics(lambda: list(subject))
    gpu = subject.get("gpu")
    gpu.open()
    time.sleep(0.05)
    during = value(scrape(render), "circuitgate_paused_seconds_total", breaker="gpu")
    assert during >= 0.05
    gpu.close()
    ended = value(scrape(render), "circuitgate_paused_seconds_total", breaker="gpu")
    time.sleep(0.02)
    assert value(scrape(render), "circuitgate_paused_seconds_total", breaker="gpu") == ended
    assert value(scrape(render), "circuitgate_paused_seconds_total", breaker="default") == 0


def test_the_breakers_are_asked_for_at_each_scrape() -> None:
    subject = breakers()
    shown = [subject.default]
    render = render_metrics(lambda: shown)
    assert value(scrape(render), "circuitgate_trips_total", breaker="default") == 0
    shown.append(subject.get("gpu"))
    assert value(scrape(render), "circuitgate_trips_total", breaker="gpu") == 0


def test_the_recent_calls_and_their_durations_are_gauges_of_the_last_evidence_calls() -> None:
    subject = breakers()
    render = render_metrics(lambda: list(subject))
    gpu = subject.get("gpu")
    assert value(scrape(render), "circuitgate_recent_calls", breaker="gpu", outcome="success") == 0
    assert (
        "circuitgate_recent_call_seconds",
        frozenset({("breaker", "gpu"), ("quantile", "0.5")}),
    ) not in scrape(render)
    for seconds in (1, 2, 3, 4):
        gpu.record_success("ok", started=gpu.clock() - seconds)
    gpu.record_failure("bad", RuntimeError(), started=gpu.clock())
    samples = scrape(render)
    assert value(samples, "circuitgate_recent_calls", breaker="gpu", outcome="success") == 4
    assert value(samples, "circuitgate_recent_calls", breaker="gpu", outcome="failure") == 1
    p50 = value(samples, "circuitgate_recent_call_seconds", breaker="gpu", quantile="0.5")
    assert 2 <= p50 < 2.1
    assert value(samples, "circuitgate_recent_calls", breaker="default", outcome="failure") == 0
