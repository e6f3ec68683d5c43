"""The one way the dev kit and the tests wait: poll a check until it holds, or fail saying what.

A wait is for something that will happen. To show that something did *not* happen, wait
for a counter of the component doing the work (the operator's reconciles, the worker's
polls) to advance by N first, then assert: never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ("TimedOut", "eventually", "eventually_async")

T = TypeVar("T")


class TimedOut(AssertionError):
    """A check did not hold in time; the message names it and its last value."""


def eventually(
    check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call ``check`` until it returns something truthy and return that value.

    Past ``timeout`` raise `TimedOut` with ``what`` (or the check's repr) and the last value,
    so a failure says what was awaited and how far it got.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimedOut(f"not within {timeout:g} s: {what or check}; last value: {last!r}")
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "",
) -> Any:
    """`eventually` for asyncio code: ``check`` may return a value or an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimedOut(f"not within {timeout:g} s: {what or check}; last value: {last!r}")
        await asyncio.sleep(interval)
