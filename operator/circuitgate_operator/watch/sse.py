"""Server-Sent Events as the worker's stream sends them, read with a bound on each event.

Only what the contract uses: ``id``, ``event`` and ``data`` fields, lines ending in ``\\n``,
comments as keep-alives. Hand-written rather than taken from an SSE client library because
none bounds the size of an event, and a hostile endpoint must not grow our memory.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Event", "EventParser", "EventTooLarge")


class EventTooLarge(ValueError):
    """More bytes than the bound arrived without an event's end."""


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: bytes


class EventParser:
    """Feed it bytes as they arrive; it returns the events they complete. A block of comments
    alone (a keep-alive) completes no event, but counts in ``blocks``. Lines end in ``\n`` or
    ``\r\n``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.blocks = 0  # blocks completed so far, keep-alives included
        self._buffer = bytearray()
        self._scanned = 0  # where the search for an event's end goes on from
        self._cr = False  # the last chunk ended in \r: the next may begin with its \n

    def feed(self, chunk: bytes) -> list[Event]:
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events: list[Event] = []
        while (end := self._buffer.find(b"\n\n", self._scanned)) >= 0:
            if end > self.max_bytes:
                raise EventTooLarge(f"an event of more than {self.max_bytes} bytes")
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._scanned = 0
            self.blocks += 1
            event = _parse(block)
            if event is not None:
                events.append(event)
        self._scanned = max(len(self._buffer) - 1, 0)
        if len(self._buffer) > self.max_bytes:
            raise EventTooLarge(f"more than {self.max_bytes} bytes without an event's end")
        return events


def _parse(block: bytes) -> Event | None:
    fields: dict[bytes, list[bytes]] = {}
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        fields.setdefault(name, []).append(value.removeprefix(b" "))
    if b"data" not in fields:
        return None
    return Event(
        id=b"".join(fields.get(b"id", [])[-1:]).decode(errors="replace"),
        event=b"".join(fields.get(b"event", [])[-1:]).decode(errors="replace") or "message",
        data=b"\n".join(fields[b"data"]),
    )
