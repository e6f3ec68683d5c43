"""The trips the node decisions count: each opening once, however often it is read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from circuitgate_devkit.cluster.plan_builders import NOW
from circuitgate_operator.clock import parse_time, rfc3339
from circuitgate_operator.contract import BreakerState, Reading
from circuitgate_operator.decide.ledger import TripLedger
from circuitgate_operator.decide.nodes import Trip

URL = "http://10.0.0.1:8000/circuit"
STAMP = "2027-01-15T08:00:00Z"
LATER = "2027-01-15T08:00:01Z"


def opened(at: str | None, state: BreakerState = BreakerState.OPEN) -> Reading:
    return Reading(URL, state, reachable=True, opened_at=at)


def test_an_opening_counts_once_and_half_open_is_the_same_opening() -> None:
    ledger = TripLedger()
    assert ledger.observe("n1", "w0", opened("2027-01-15T08:00:00Z"), NOW, limit=3) is True
    assert ledger.observe("n1", "w0", opened("2027-01-15T08:00:00Z"), NOW, limit=3) is False
    half = opened("2027-01-15T08:00:00Z", BreakerState.HALF_OPEN)
    assert ledger.observe("n1", "w0", half, NOW, limit=3) is False
    assert ledger.observe("n1", "w0", opened("2027-01-15T08:05:00Z"), NOW, limit=3) is True
    assert [t.pod for t in ledger.by_node(keep=10**9, now=NOW)["n1"]] == ["w0", "w0"]


def test_forced_open_closed_and_unknown_are_no_trips() -> None:
    ledger = TripLedger()
    for state in (BreakerState.FORCED_OPEN, BreakerState.CLOSED, BreakerState.UNKNOWN):
        assert (
            ledger.observe("n1", "w0", opened("2027-01-15T08:00:00Z", state), NOW, limit=3) is False
        )
    assert ledger.observe("n1", "w0", opened(None), NOW, limit=3) is False
    assert ledger.by_node(keep=10**9, now=NOW) == {}


def test_old_trips_go_and_a_future_opening_counts_as_now() -> None:
    ledger = TripLedger()
    ledger.observe("n1", "w0", opened("2000-01-01T00:00:00Z"), NOW, limit=3)
    ledger.observe("n2", "w1", opened("2100-01-01T00:00:00Z"), NOW, limit=3)  # a skewed clock
    assert ledger.by_node(keep=600, now=NOW) == {"n2": [Trip("w1", NOW)]}
    assert ledger.by_node(keep=600, now=NOW + 600) == {}


def test_a_pod_reporting_a_new_opening_every_reading_keeps_the_ledger_bounded() -> None:
    """A hostile endpoint answering each long-poll at once with a fresh openedAt: one pod never
    needs more trips than the threshold to cordon its node, so no more are kept."""
    ledger = TripLedger()
    for i in range(1000):
        stamp = f"2027-01-15T08:{i // 60:02d}:{i % 60:02d}Z"
        ledger.observe("n1", "w0", opened(stamp), NOW + i, limit=3)
    ledger.observe("n1", "w1", opened("2027-01-15T08:00:00Z"), NOW, limit=3)
    trips = ledger.by_node(keep=10**9, now=NOW + 1000)["n1"]
    assert [t.pod for t in trips] == ["w1", "w0", "w0", "w0"]
    assert trips[-1].at == parse_time("2027-01-15T08:16:39Z")  # the newest are kept


def test_openings_between_two_readings_count_through_the_trip_counter() -> None:
    """A watcher reads at most a few times a second: a breaker that closed and opened again
    between two readings shows one new openedAt, but its trip counter says how many
    openings there were, and each counts (at most ``limit``)."""
    ledger = TripLedger()
    closed = Reading(URL, BreakerState.CLOSED, reachable=True, trips=0)
    first = Reading(URL, BreakerState.OPEN, reachable=True, trips=2, opened_at=STAMP)
    assert ledger.observe("n1", "w0", closed, NOW, limit=3) is False
    assert ledger.observe("n1", "w0", first, NOW, limit=3) is True
    assert [t.pod for t in ledger.by_node(keep=10**9, now=NOW)["n1"]] == ["w0", "w0"]
    many = Reading(URL, BreakerState.OPEN, reachable=True, trips=50, opened_at=LATER)
    assert ledger.observe("n1", "w0", many, NOW, limit=3) is True
    assert len(ledger.by_node(keep=10**9, now=NOW)["n1"]) == 3


def test_a_first_reading_or_a_restarted_worker_counts_one_opening() -> None:
    """No earlier reading (after our restart) or a counter that went back (the worker
    restarted): the counter says nothing about how many openings we missed."""
    ledger = TripLedger()
    seen = Reading(URL, BreakerState.OPEN, reachable=True, trips=7, opened_at=STAMP)
    assert ledger.observe("n1", "w0", seen, NOW, limit=3) is True
    again = Reading(URL, BreakerState.OPEN, reachable=True, trips=1, opened_at=LATER)
    assert ledger.observe("n1", "w0", again, NOW, limit=3) is True
    assert len(ledger.by_node(keep=10**9, now=NOW)["n1"]) == 2


def test_the_counters_of_pods_gone_are_forgotten() -> None:
    ledger = TripLedger()
    for pod in ("w0", "w1"):
        ledger.observe("n1", pod, Reading(URL, BreakerState.CLOSED, reachable=True), NOW, limit=3)
    ledger.retain({"w1"})
    for pod in ("w0", "w1"):
        seen = Reading(URL, BreakerState.OPEN, reachable=True, trips=2, opened_at=STAMP)
        ledger.observe("n1", pod, seen, NOW, limit=3)
    assert sorted(t.pod for t in ledger.by_node(keep=10**9, now=NOW)["n1"]) == ["w0", "w1", "w1"]


def test_an_opening_that_closed_again_between_two_readings_still_counts() -> None:
    """Closed, then opened and closed again before the next reading: only the trip counter
    shows it, and the opening counts as seen now."""
    ledger = TripLedger()
    assert not ledger.observe("n1", "w0", Reading(URL, BreakerState.CLOSED, True), NOW, limit=3)
    closed_again = Reading(URL, BreakerState.CLOSED, reachable=True, trips=1)
    assert ledger.observe("n1", "w0", closed_again, NOW + 1, limit=3) is True
    reopened = Reading(URL, BreakerState.OPEN, reachable=True, trips=2, opened_at=STAMP)
    assert ledger.observe("n1", "w0", reopened, NOW + 2, limit=3) is True
    opened = min(parse_time(STAMP) or NOW, NOW + 2)
    assert [t.at for t in ledger.by_node(keep=10**9, now=NOW + 2)["n1"]] == sorted(
        [NOW + 1, opened]
    )


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40))
def test_every_opening_after_the_first_reading_counts_once_whichever_readings_were_seen(
    steps: list[tuple[bool, bool]],
) -> None:
    """The invariant behind the trip counter: a breaker opens and closes at will, the
    watcher sees any subset of its states, and the ledger holds exactly the openings since
    the first reading (the one a first open reading shows included), each once."""
    ledger = TripLedger()
    trips, opened_at, first, last = 0, None, None, 0
    for n, (toggle, seen) in enumerate(steps):
        now = NOW + n
        if toggle:
            if opened_at is None:
                trips, opened_at = trips + 1, rfc3339(now)
            else:
                opened_at = None
        if not seen:
            continue
        state = BreakerState.CLOSED if opened_at is None else BreakerState.OPEN
        reading = Reading(URL, state, reachable=True, trips=trips, opened_at=opened_at)
        ledger.observe("n1", "w0", reading, now, limit=10**6)
        if first is None:
            first = trips - (opened_at is not None)
        last = trips
    recorded = ledger.by_node(keep=10**9, now=NOW + len(steps)).get("n1", [])
    assert len(recorded) == (0 if first is None else last - first)


def test_an_outlier_counts_once_as_a_trip_however_often_it_is_seen() -> None:
    ledger = TripLedger()
    for _ in range(3):  # every pass, and again after a restart, from its CircuitState
        ledger.note_outlier("n1", "w0", "2027-01-15T08:00:00Z", NOW - 5, limit=2)
    ledger.note_outlier("n1", "w0", "2027-01-15T09:00:00Z", NOW, limit=2)  # a later deviation
    assert ledger.by_node(keep=60, now=NOW) == {"n1": [Trip("w0", NOW - 5), Trip("w0", NOW)]}
    assert ledger.by_node(keep=60, now=NOW + 58) == {"n1": [Trip("w0", NOW)]}
    for n in range(5):  # a pod deviating again and again keeps only its newest trips
        ledger.note_outlier("n1", "w1", f"2027-01-15T1{n}:00:00Z", NOW + n, limit=2)
    assert [t.at for t in ledger.by_node(keep=60, now=NOW + 5)["n1"] if t.pod == "w1"] == [
        NOW + 3,
        NOW + 4,
    ]
