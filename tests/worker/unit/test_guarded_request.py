"""Which stored SUCCESS makes a lost child's message done: only one of this delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from circuitgate.guarded_request import _success_was_stored

STARTED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EAST = timezone(timedelta(hours=5))


def request(date_done: Any, *, zone: Any = UTC, started: datetime | None = STARTED) -> Any:
    meta = {"status": "SUCCESS", "date_done": date_done} if date_done != "none" else None
    return SimpleNamespace(
        _success_was_stored=lambda: meta,
        time_start=started.timestamp() if started else None,
        task=SimpleNamespace(app=SimpleNamespace(timezone=zone)),
    )


@pytest.mark.parametrize(
    ("date_done", "zone", "done"),
    [
        (STARTED + timedelta(seconds=1), UTC, True),  # this delivery's
        ((STARTED + timedelta(seconds=1)).isoformat(), UTC, True),  # redis, file backends
        (STARTED - timedelta(hours=1), UTC, False),  # an earlier message of the same id
        ("none", UTC, False),  # nothing stored
        ("not a time", UTC, False),
        # Naive: UTC (MongoDB) or the app's zone (database backend); in doubt, not done.
        ((STARTED + timedelta(seconds=1)).replace(tzinfo=None), UTC, True),
        ((STARTED + timedelta(seconds=1)).replace(tzinfo=None), EAST, False),
    ],
)
def test_only_a_success_stored_after_this_delivery_started_counts(
    date_done: Any, zone: Any, done: bool
) -> None:
    assert _success_was_stored(request(date_done, zone=zone)) is done


def test_without_a_start_time_the_message_is_handed_back() -> None:
    assert _success_was_stored(request(STARTED, started=None)) is False
