"""The operator's garbage collection: what survives is frozen, garbage in cycles is collected
before it could be, and a thaw collects what became garbage while frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from circuitgate_devkit.waiting import eventually_async
from circuitgate_operator.heap import keep_old_objects_frozen


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """Counts full collections as they end; the heap thawed afterwards."""
    counted: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            counted.append(1)

    gc.callbacks.append(count)
    yield counted
    gc.callbacks.remove(count)
    gc.unfreeze()


@pytest.mark.parametrize("thaw_every", [3600.0, 0.0])
def test_survivors_are_frozen_and_a_thaw_collects_frozen_garbage(
    full_collections: list[int], thaw_every: float
) -> None:
    async def scenario() -> tuple[bool, bool]:
        garbage, kept = Node(), Node()
        gone = weakref.ref(garbage)
        del garbage
        rounds = asyncio.create_task(keep_old_objects_frozen(0.01, thaw_every))
        await eventually_async(lambda: gc.get_freeze_count() > 0)
        collected_young = gone() is None
        frozen = weakref.ref(kept)
        del kept  # garbage now, and frozen
        seen = len(full_collections)
        await eventually_async(lambda: len(full_collections) >= seen + 3)
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
        return collected_young, frozen() is None

    collected_young, collected_frozen = asyncio.run(scenario())
    assert collected_young
    assert collected_frozen == (thaw_every == 0.0)
