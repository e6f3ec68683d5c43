"""Prometheus metrics of the worker's breakers, read from shared memory at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .breaker import SharedCircuitBreaker
from .consumer_pulse import ConsumerPulse, ConsumerStatus
from .evidence import summarize
from .shared_state import State

__all__ = ("BreakerCollector", "ConsumerCollector", "render_metrics")


class BreakerCollector(Collector):
    """Reads every breaker's snapshot when scraped: nothing to update on the task path."""

    def __init__(self, breakers: Callable[[], Sequence[SharedCircuitBreaker]]) -> None:
        self._breakers = breakers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "circuitgate_breaker_state",
            "1 for the breaker's current state.",
            labels=["breaker", "state"],
        )
        failures = GaugeMetricFamily(
            "circuitgate_consecutive_failures", "Counted failures in a row.", labels=["breaker"]
        )
        outcomes = CounterMetricFamily(
            "circuitgate_calls", "Guarded task outcomes.", labels=["breaker", "outcome"]
        )
        trips = CounterMetricFamily(
            "circuitgate_trips", "Times the circuit opened.", labels=["breaker"]
        )
        paused = CounterMetricFamily(
            "circuitgate_paused_seconds", "Seconds the worker did not fetch.", labels=["breaker"]
        )
        handed_back = CounterMetricFamily(
            "circuitgate_handed_back_messages",
            "Messages given back to the queue: 'open' unexecuted, 'failed' after a counted fault.",
            labels=["breaker", "reason"],
        )
        trials = CounterMetricFamily(
            "circuitgate_trials", "Half-open trial outcomes.", labels=["breaker", "outcome"]
        )
        probes = CounterMetricFamily(
            "circuitgate_probes",
            "Outcomes of the probe run before each half-open trial (circuitgate_probe).",
            labels=["breaker", "outcome"],
        )
        # A poll is a chance to fetch: "N polls and nothing ran" is proof without a sleep.
        polls = CounterMetricFamily(
            "circuitgate_gate_polls",
            "Times the consumer asked whether it may fetch.",
            labels=["breaker"],
        )
        recent = GaugeMetricFamily(
            "circuitgate_recent_calls",
            "The breaker's last calls (circuitgate_evidence_calls at most), by outcome.",
            labels=["breaker", "outcome"],
        )
        recent_seconds = GaugeMetricFamily(
            "circuitgate_recent_call_seconds",
            "Durations of the successful ones among them, by quantile (absent: none).",
            labels=["breaker", "quantile"],
        )
        for breaker in self._breakers():
            name = breaker.name or "default"
            snapshot = breaker.snapshot()
            for candidate in State:
                state.add_metric([name, candidate.name.lower()], float(snapshot.state is candidate))
            failures.add_metric([name], snapshot.fail_counter)
            outcomes.add_metric([name, "success"], snapshot.successes_total)
            outcomes.add_metric([name, "failure"], snapshot.failures_total)
            trips.add_metric([name], snapshot.trips)
            paused.add_metric([name], snapshot.paused_seconds)
            handed_back.add_metric([name, "open"], snapshot.refused_total)
            handed_back.add_metric([name, "failed"], snapshot.handed_back_total)
            trials.add_metric([name, "success"], snapshot.trial_successes)
            trials.add_metric([name, "failure"], snapshot.trial_failures)
            polls.add_metric([name], breaker.polls)
            if breaker.settings.probe is not None:
                probes.add_metric([name, "passed"], snapshot.probe_successes)
                probes.add_metric([name, "failed"], snapshot.probe_failures)
            calls = summarize(breaker.shared.recent_calls(breaker.settings.evidence_calls))
            recent.add_metric([name, "success"], calls.calls - calls.failures)
            recent.add_metric([name, "failure"], calls.failures)
            for quantile, seconds in (("0.5", calls.p50_seconds), ("0.9", calls.p90_seconds)):
                if seconds is not None:
                    recent_seconds.add_metric([name, quantile], seconds)
        yield from (state, failures, outcomes, trips, paused, handed_back, trials, probes, polls)
        yield from (recent, recent_seconds)


class ConsumerCollector(Collector):
    """The consumer's pulse when scraped: its status, its loop's and its polls' ages."""

    def __init__(
        self, pulse: ConsumerPulse, breakers: Callable[[], Sequence[SharedCircuitBreaker]]
    ) -> None:
        self._pulse = pulse
        self._breakers = breakers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        paused = all(not breaker.snapshot().state.flowing for breaker in self._breakers())
        current = self._pulse.status(paused=paused)
        reading = self._pulse.read()
        status = GaugeMetricFamily(
            "circuitgate_consumer_status", "1 for the consumer's current status.", labels=["status"]
        )
        for candidate in ConsumerStatus:
            status.add_metric([candidate.value], float(candidate is current))
        yield status
        ages = (
            ("tick_age", "Seconds since the consumer's event loop last ticked.", reading.tick_age),
            (
                "unanswered_poll",
                "Seconds the oldest broker poll has waited for its answer (0: none waits).",
                reading.unanswered_for or 0.0,
            ),
        )
        for name, documentation, seconds in ages:
            if seconds is not None:
                yield GaugeMetricFamily(
                    f"circuitgate_consumer_{name}_seconds", documentation, value=seconds
                )
        yield GaugeMetricFamily(
            "circuitgate_active_tasks", "Tasks running in the pool.", value=reading.active_tasks
        )


def render_metrics(
    breakers: Callable[[], Sequence[SharedCircuitBreaker]], pulse: ConsumerPulse | None = None
) -> Callable[[], bytes]:
    """A function that renders the Prometheus exposition of ``breakers`` (and of the consumer,
    given its ``pulse``) on each call."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BreakerCollector(breakers))
    if pulse is not None:
        registry.register(ConsumerCollector(pulse, breakers))
    return lambda: generate_latest(registry)
