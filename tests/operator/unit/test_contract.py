"""The operator's copy of the breaker-state schema, and reading documents with it."""

from __future__ import annotations

import json

import pytest

from circuitgate.contract import BreakerDocument, WorkerDocument
from circuitgate_devkit.paths import REPO
from circuitgate_operator.contract import SCHEMA_PATH, load_schema, parse_document

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
