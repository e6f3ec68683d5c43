"""The stream's event parser: the same events however the bytes are cut, and a bound on each."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuitgate_operator.watch.sse import Event, EventParser, EventTooLarge

_LINE = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
_EVENTS = st.lists(
    st.tuples(st.integers(0, 10**9), st.lists(_LINE, min_size=1, max_size=3)), max_size=8
)


def _wire(events: list[tuple[int, list[bytes]]], keepalives: bool, crlf: bool = False) -> bytes:
    out = b""
    for number, data in events:
        if keepalives:
            out += b": keep-alive\n\n"
        out += b"id: %d\nevent: circuit\n" % number
        out += b"".join(b"data: %s\n" % line for line in data) + b"\n"
    return out.replace(b"\n", b"\r\n") if crlf else out


@given(
    events=_EVENTS,
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    keepalives=st.booleans(),
    crlf=st.booleans(),
)
def test_events_come_out_whole_however_the_bytes_are_cut(
    events: list[tuple[int, list[bytes]]], cuts: list[int], keepalives: bool, crlf: bool
) -> None:
    wire = _wire(events, keepalives, crlf)
    parser = EventParser(max_bytes=10**6)
    heard: list[Event] = []
    start = 0
    for cut in [*sorted(min(c, len(wire)) for c in cuts), len(wire)]:
        heard += parser.feed(wire[start:cut])
        start = cut
    assert heard == [
        Event(id=str(number), event="circuit", data=b"\n".join(data)) for number, data in events
    ]
    assert parser.blocks == len(events) * (2 if keepalives else 1)


@given(st.binary(max_size=3000), st.integers(1, 500))
def test_no_input_grows_the_parser_past_its_bound(wire: bytes, chunk: int) -> None:
    parser = EventParser(max_bytes=256)
    for start in range(0, len(wire), chunk):
        try:
            events = parser.feed(wire[start : start + chunk])
        except EventTooLarge:
            return
        assert all(len(e.data) <= len(wire) for e in events)
        assert len(parser._buffer) <= 256


def test_an_event_past_the_bound_is_refused() -> None:
    parser = EventParser(max_bytes=100)
    with pytest.raises(EventTooLarge, match="more than 100 bytes"):
        parser.feed(b"data: " + b"x" * 200)
    whole = EventParser(max_bytes=100)  # arrived whole, in one chunk
    with pytest.raises(EventTooLarge, match="more than 100 bytes"):
        whole.feed(b"data: " + b"x" * 200 + b"\n\n")
