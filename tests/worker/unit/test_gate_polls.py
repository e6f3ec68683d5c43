"""The gate's polls, counted: what lets a scenario test say "N chances to fetch, nothing ran"."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from circuitgate.breaker_set import BreakerSet
from circuitgate.metrics import render_metrics
from circuitgate.settings import Settings


def polls(render: bytes) -> dict[str, float]:
    return {
        sample.labels["breaker"]: sample.value
        for family in text_string_to_metric_families(render.decode())
        for sample in family.samples
        if sample.name == "circuitgate_gate_polls_total"
    }


def test_every_fetch_check_is_a_poll_counted_per_breaker_open_or_not() -> None:
    breakers = BreakerSet(Settings(fail_max=1, reset_timeout=30))
    render = render_metrics(lambda: list(breakers))
    assert polls(render()) == {"default": 0}

    breakers.default.fetch_allowed()
    breakers.default.open()
    assert not breakers.default.fetch_allowed()

    assert polls(render()) == {"default": 2}
