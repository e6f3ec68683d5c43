"""What the breaker's unit tests share: a clock moved by hand and a failure that counts."""

from __future__ import annotations


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DeviceFault(Exception):
    pass
