"""The garbage collector on the heap of ten thousand watchers.

Python's full collection walks every object it tracks: with ten thousand open streams, their
pods and states, several million of them, 0.3 to 0.9 s with the event loop stopped, as often
as the heap grows by a quarter (27 times in the first three minutes at 10 000 pods). A trip
that arrives during one waits for it. As CPython suggests for long-lived heaps (``gc.freeze``),
what has survived a full collection is moved out of the collector's sight now and then, so the
automatic collections walk only what is new. Reference counting still frees frozen objects;
only frozen garbage in reference cycles would stay, so once in a while everything is thawed
and collected in full.
"""

from __future__ import annotations

import asyncio
import gc
import time

__all__ = ("FREEZE_SECONDS", "THAW_SECONDS", "keep_old_objects_frozen")

FREEZE_SECONDS = 60.0
THAW_SECONDS = 3600.0


async def keep_old_objects_frozen(
    every: float = FREEZE_SECONDS, thaw_every: float = THAW_SECONDS
) -> None:
    """Every ``every`` seconds collect what is not frozen and freeze what survived; every
    ``thaw_every`` seconds collect everything first. Runs until cancelled."""
    thawed_at = time.monotonic()
    while True:
        await asyncio.sleep(every)
        if time.monotonic() - thawed_at >= thaw_every:
            gc.unfreeze()
            thawed_at = time.monotonic()
        gc.collect()
        gc.freeze()
