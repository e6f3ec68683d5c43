"""The last counted failures a breaker remembers: their type always, their message if exposed."""

from __future__ import annotations

import dataclasses

import pytest

from circuitgate.breaker import SharedCircuitBreaker, failure_message
from circuitgate.breaker_set import BreakerSet
from circuitgate.report import describe_worker
from circuitgate.settings import Settings, load_settings
from circuitgate.shared_state import FAILURE_MESSAGE_SIZE, FAILURES_KEPT

from .fakes import DeviceFault, FakeClock


class CudaError(Exception):
    pass


class Hostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def make(**overrides: object) -> SharedCircuitBreaker:
    settings = dataclasses.replace(Settings(fail_max=100), **overrides)
    return SharedCircuitBreaker(settings, clock=FakeClock(), wall_clock=lambda: 1_800_000_000.0)


def test_the_type_of_each_counted_failure_is_kept_and_its_message_only_if_exposed() -> None:
    hidden, shown = make(), make(expose_failure_messages=True)
    for breaker in (hidden, shown):
        breaker.record_failure("t", CudaError("an illegal memory access was encountered"))
        breaker.release("neutral")  # no evidence either way
    assert hidden.snapshot().last_failures == (("CudaError", None, 1_800_000_000.0),)
    assert shown.snapshot().last_failures == (
        ("CudaError", "an illegal memory access was encountered", 1_800_000_000.0),
    )


def test_the_last_failures_kept_are_the_newest_oldest_first() -> None:
    breaker = make(expose_failure_messages=True)
    for n in range(FAILURES_KEPT + 3):
        breaker.record_failure(f"t{n}", DeviceFault(f"fault {n}"))
    kept = breaker.snapshot().last_failures
    assert [message for _, message, _ in kept] == [
        f"fault {n}" for n in range(3, FAILURES_KEPT + 3)
    ]


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (
            CudaError("line one\nline two\ttabbed\x00nul\x1b[31m"),
            "line one line two tabbed nul [31m",
        ),
        (Hostile(), "<unprintable exception>"),
        (CudaError(), ""),
    ],
)
def test_a_message_is_one_printable_line_whatever_the_exception_says(
    exc: BaseException, said: str
) -> None:
    assert failure_message(exc) == said


def test_a_long_message_is_cut_between_characters_and_always_decodes() -> None:
    breaker = make(expose_failure_messages=True)
    breaker.record_failure("t", CudaError("ü" * 1000))
    ((kind, message, _),) = breaker.snapshot().last_failures
    assert kind == "CudaError" and message is not None
    assert set(message) == {"ü"} and len(message.encode()) <= FAILURE_MESSAGE_SIZE


def test_the_document_lists_them_with_their_time() -> None:
    breakers = BreakerSet(load_settings({"circuitgate_expose_failure_messages": True}))
    breakers.default.record_failure("t", CudaError("device lost"))
    data = describe_worker("w@host", breakers, ["celery"]).to_json()
    (note,) = data["breakers"][0]["last_failures"]
    assert note["type"] == "CudaError" and note["message"] == "device lost"
    assert note["at"].endswith("Z")
