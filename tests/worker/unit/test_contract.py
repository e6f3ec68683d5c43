"""The breaker-state document: what the worker writes always validates against the schema."""

from __future__ import annotations

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuitgate.breaker_set import BreakerSet
from circuitgate.contract import (
    BreakerDocument,
    FailureNote,
    RecentCalls,
    WorkerDocument,
    load_schema,
)
from circuitgate.report import describe_worker
from circuitgate.settings import Settings
from circuitgate.shared_state import State

validator = jsonschema.Draft202012Validator(
    load_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

times = st.one_of(st.none(), st.integers(min_value=0, max_value=4_000_000_000).map(float))
seconds = st.one_of(st.none(), st.floats(0, 1e9))
recent_calls = st.builds(
    RecentCalls,
    calls=st.integers(0, 256),
    failures=st.integers(0, 256),
    p50_seconds=seconds,
    p90_seconds=seconds,
)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
breakers = st.builds(
    BreakerDocument,
    name=names,
    state=st.sampled_from(["closed", "open", "half_open", "forced_open", "forced_closed"]),
    consecutive_failures=st.integers(0, 10**6),
    window_calls=st.integers(0, 1024),
    window_failures=st.integers(0, 1024),
    trips=st.integers(0, 10**6),
    opened_at=times,
    may_close_at=times,
    consumption_paused=st.booleans(),
    queues=st.lists(names, max_size=4).map(tuple),
    paused_queues=st.lists(names, max_size=4).map(tuple),
    recent_calls=recent_calls,
    last_failures=st.lists(
        st.builds(
            FailureNote,
            type=names,
            message=st.one_of(st.none(), names),
            at=st.integers(0, 4_000_000_000).map(float),
        ),
        max_size=4,
    ).map(tuple),
)
documents = st.builds(
    WorkerDocument,
    worker=names,
    sequence=st.integers(0, 2**63 - 1),
    generated_at=st.integers(0, 4_000_000_000).map(float),
    breakers=st.lists(breakers, min_size=1, max_size=3).map(tuple),
)


@given(documents)
def test_any_document_validates_and_round_trips(document: WorkerDocument) -> None:
    data = document.to_json()
    validator.validate(data)
    assert WorkerDocument.from_json(data) == document


def test_the_workers_document_validates_in_every_state() -> None:
    breakers = BreakerSet(Settings(fail_max=1))
    breaker = breakers.default
    documents = [describe_worker("w@host", breakers, ["celery"]).to_json()]
    for step in (
        lambda: breaker.record_failure("t", RuntimeError()),
        lambda: (breaker.half_open(), breaker.admit("trial")),
        lambda: breaker.force(State.FORCED_OPEN),
        lambda: breaker.force(State.FORCED_CLOSED),
    ):
        step()
        documents.append(describe_worker("w@host", breakers, ["celery"]).to_json())
    for data in documents:
        validator.validate(data)
    assert [d["breakers"][0]["state"] for d in documents] == [s.name.lower() for s in State]
    sequences = [d["sequence"] for d in documents]
    assert sequences == sorted(set(sequences))


def test_a_document_missing_a_field_or_with_an_unknown_state_is_invalid() -> None:
    data = describe_worker("w@host", BreakerSet(Settings()), ["celery"]).to_json()
    del data["breakers"][0]["trips"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(data)
    data = describe_worker("w@host", BreakerSet(Settings()), ["celery"]).to_json()
    data["breakers"][0]["state"] = "ajar"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(data)
