"""The trips the node decisions count: each opening once, however often it is read."""

from __future__ import annotations

from circuitgate_operator.contract import BreakerState, Reading
from circuitgate_operator.decide.ledger import TripLedger
from circuitgate_operator.decide.nodes import Trip

from .builders import NOW

URL = "http://10.0.0.1:8000/circuit"


def opened(at: str | None, state: BreakerState = BreakerState.OPEN) -> Reading:
    return Reading(URL, state, reachable=True, opened_at=at)


def test_an_opening_counts_once_and_half_open_is_the_same_opening() -> None:
    ledger = TripLedger()
    assert ledger.observe("n1", "w0", opened("2027-01-15T08:00:00Z"), NOW) is True
    assert ledger.observe("n1", "w0", opened("2027-01-15T08:00:00Z"), NOW) is False
    half = opened("2027-01-15T08:00:00Z", BreakerState.HALF_OPEN)
    assert ledger.observe("n1", "w0", half, NOW) is False
    assert ledger.observe("n1", "w0", opened("2027-01-15T08:05:00Z"), NOW) is True
    assert [t.pod for t in ledger.by_node(keep=10**9, now=NOW)["n1"]] == ["w0", "w0"]


def test_forced_open_closed_and_unknown_are_no_trips() -> None:
    ledger = TripLedger()
    for state in (BreakerState.FORCED_OPEN, BreakerState.CLOSED, BreakerState.UNKNOWN):
        assert ledger.observe("n1", "w0", opened("2027-01-15T08:00:00Z", state), NOW) is False
    assert ledger.observe("n1", "w0", opened(None), NOW) is False
    assert ledger.by_node(keep=10**9, now=NOW) == {}


def test_old_trips_go_and_a_future_opening_counts_as_now() -> None:
    ledger = TripLedger()
    ledger.observe("n1", "w0", opened("2000-01-01T00:00:00Z"), NOW)
    ledger.observe("n2", "w1", opened("2100-01-01T00:00:00Z"), NOW)  # a skewed clock
    assert ledger.by_node(keep=600, now=NOW) == {"n2": [Trip("w1", NOW)]}
    assert ledger.by_node(keep=600, now=NOW + 600) == {}
