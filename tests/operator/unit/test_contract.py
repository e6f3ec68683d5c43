"""The operator's copy of the breaker-state schema, and reading documents with it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from circuitgate.contract import (
    BreakerDocument,
    ConsumerDocument,
    FailureNote,
    RecentCalls,
    WorkerDocument,
)
from circuitgate_devkit.paths import REPO
from circuitgate_operator.contract import SCHEMA_PATH, CallEvidence, load_schema, parse_document

URL = "http://10.0.0.1:8000/circuit"


def breaker(name: str = "default", state: str = "closed", trips: int = 0) -> BreakerDocument:
    opened = 1_800_000_000.5 if state != "closed" else None
    return BreakerDocument(
        name=name,
        state=state,  # type: ignore[arg-type]
        consecutive_failures=2,
        window_calls=10,
        window_failures=2,
        trips=trips,
        opened_at=opened,
        may_close_at=opened + 60 if opened else None,
        consumption_paused=state == "open",
    )


def document(*breakers: BreakerDocument, sequence: int = 5) -> bytes:
    return WorkerDocument("celery@w1", sequence, 1_800_000_100.0, breakers).dumps()


def test_the_operator_ships_the_worker_schema_byte_for_byte() -> None:
    worker_copy = REPO / "worker" / "circuitgate" / "schemas" / "breaker-state.v1.json"
    assert SCHEMA_PATH.read_bytes() == worker_copy.read_bytes()
    assert load_schema()["$id"].endswith("breaker-state.v1.json")


def test_a_worker_document_reads_as_its_most_severe_breaker() -> None:
    reading = parse_document(
        URL, document(breaker("cpu", trips=1), breaker("gpu", "open", trips=2), sequence=9)
    )
    assert reading.reachable and reading.state == "open" and reading.breaker == "gpu"
    assert reading.trips == 3 and reading.sequence == 9 and reading.consumption_paused
    assert reading.opened_at == "2027-01-15T08:00:00.500000Z"


def test_the_consumer_status_is_read_and_a_hostile_one_is_malformed() -> None:
    pulse = ConsumerDocument("stalled", 75.5, None, 2, 600.0)
    payload = WorkerDocument("celery@w1", 5, 1_800_000_100.0, (breaker(),), pulse).dumps()
    assert parse_document(URL, payload).consumer == "stalled"
    assert parse_document(URL, document(breaker())).consumer is None  # a worker that predates it
    data = json.loads(payload)
    data["consumer"]["status"] = "napping"
    hostile = parse_document(URL, json.dumps(data).encode())
    assert hostile.state == "unknown" and "consumer/status" in hostile.reason


def mutate(change: str) -> bytes:
    data = json.loads(document(breaker()))
    if change == "extra field":
        data["breakers"][0]["colour"] = "red"
    elif change == "wrong schema id":
        data["schema"] = "circuitgate.io/breaker-state/v2"
    elif change == "unknown state":
        data["breakers"][0]["state"] = "ajar"
    elif change == "no breakers":
        data["breakers"] = []
    elif change == "negative trips":
        data["breakers"][0]["trips"] = -1
    elif change == "zoneless time":
        data["generated_at"] = "2027-01-15T08:00:00"
    elif change == "bad time":
        data["generated_at"] = "yesterday"
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "change",
    ["extra field", "wrong schema id", "unknown state", "no breakers", "negative trips",
     "zoneless time", "bad time"],
)  # fmt: skip
def test_anything_off_contract_is_unknown_never_closed(change: str) -> None:
    reading = parse_document(URL, mutate(change))
    assert reading.state == "unknown" and not reading.reachable
    assert reading.error == "malformed"
    assert reading.reason.startswith("malformed document")


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'"closed"'])
def test_garbage_is_unknown(payload: bytes) -> None:
    assert parse_document(URL, payload).state == "unknown"


INT64_MAX = 2**63 - 1


def integer_fields(node: object, where: str = "") -> list[tuple[str, dict[str, object]]]:
    """Every ``"type": "integer"`` in the schema, with where it is."""
    found: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        if node.get("type") == "integer":
            found.append((where, node))
        for key, value in node.items():
            found += integer_fields(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += integer_fields(value, f"{where}/{index}")
    return found


def test_every_integer_of_the_schema_fits_an_int64() -> None:
    """Anything above int64 would pass us and then fail every CircuitState patch with 422."""
    fields = integer_fields(load_schema())
    assert len(fields) >= 5
    assert [where for where, field in fields if field.get("maximum") != INT64_MAX] == []


def hostile(change: str) -> bytes:
    data = json.loads(document(breaker("default", "open", trips=1)))
    if change == "year one, east of UTC":
        data["breakers"][0]["opened_at"] = "0001-01-01T00:00:00+01:00"
    elif change == "year 9999, west of UTC":
        data["breakers"][0]["may_close_at"] = "9999-12-31T23:59:59-01:00"
    elif change == "sequence above int64":
        data["sequence"] = 2**63
    elif change == "trips above int64":
        data["breakers"][0]["trips"] = 2**64
    elif change == "integral float sequence":
        data["sequence"] = 1e300
    elif change == "NaN failures":
        data["breakers"][0]["consecutive_failures"] = float("nan")
    return json.dumps(data).encode()


HOSTILE_CHANGES = (
    "year one, east of UTC", "year 9999, west of UTC", "sequence above int64",
    "trips above int64", "integral float sequence", "NaN failures",
)  # fmt: skip


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested lists"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="nested objects"),
        pytest.param(b"1" * 10_000, id="a 10000-digit number"),
        pytest.param(b'{"schema": 1e999999}', id="an infinite float"),
        *(pytest.param(hostile(change), id=change) for change in HOSTILE_CHANGES),
    ],
)
def test_a_hostile_document_is_unknown_never_an_exception(payload: bytes) -> None:
    reading = parse_document(URL, payload)
    assert reading.state == "unknown" and not reading.reachable
    assert reading.error == "malformed" and reading.reason


def test_the_pods_trips_are_summed_within_int64() -> None:
    """Each breaker in range, their sum not necessarily: the sum is what CircuitState holds."""
    many = [breaker(f"b{n}", "open", trips=INT64_MAX) for n in range(3)]
    reading = parse_document(URL, document(*many))
    assert reading.state == "open" and reading.trips == INT64_MAX


def test_the_worst_breakers_last_failures_are_read_and_a_bad_time_among_them_is_malformed() -> None:
    failing = dataclasses.replace(
        breaker("gpu", "open"),
        last_failures=(FailureNote("CudaError", "device lost", 1_800_000_000.0),),
    )
    reading = parse_document(URL, document(breaker("cpu"), failing))
    assert reading.last_failures == (("CudaError", "device lost"),)
    data = json.loads(document(failing))
    data["breakers"][0]["last_failures"][0]["at"] = "2027-01-15T08:00:00"
    assert parse_document(URL, json.dumps(data).encode()).error == "malformed"


def test_a_document_from_a_worker_without_the_newer_fields_still_reads() -> None:
    data = json.loads(document(breaker("gpu", "open")))
    for field in ("recent_calls", "last_failures"):
        del data["breakers"][0][field]
    reading = parse_document(URL, json.dumps(data).encode())
    assert reading.reachable and reading.state == "open" and reading.last_failures == ()
    assert reading.evidence == ()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_number_json_has_not_is_malformed(constant: str) -> None:
    """Python's JSON reads them, and NaN passes every minimum and maximum of the schema."""
    text = document(breaker()).decode().replace('"p50_seconds":null', f'"p50_seconds":{constant}')
    assert constant in text
    reading = parse_document(URL, text.encode())
    assert (reading.state, reading.reason) == (
        "unknown",
        "malformed document: a number is not finite",
    )


def test_every_breakers_recent_calls_are_read_as_evidence() -> None:
    busy = dataclasses.replace(breaker("gpu"), recent_calls=RecentCalls(100, 30, 41.5, 58.0))
    reading = parse_document(URL, document(breaker("cpu"), busy))
    assert reading.evidence == (
        CallEvidence("cpu", 0, 0, None),
        CallEvidence("gpu", 100, 30, 41.5),
    )
    assert reading.evidence[1].failure_rate == 0.3 and reading.evidence[0].failure_rate == 0.0
    assert CallEvidence("x", 10, 99, None).failure_rate == 1.0  # a hostile count, bounded
