"""pybreaker's storage interface over the shared page."""

from __future__ import annotations

from datetime import UTC, datetime

import pybreaker

from .shared_state import BreakerFields, SharedBreakerState, State

__all__ = ("SharedMemoryStorage",)

_NAMES = {
    State.CLOSED: pybreaker.STATE_CLOSED,
    State.OPEN: pybreaker.STATE_OPEN,
    State.HALF_OPEN: pybreaker.STATE_HALF_OPEN,
    State.FORCED_OPEN: pybreaker.STATE_OPEN,
    State.FORCED_CLOSED: pybreaker.STATE_CLOSED,
}
_STATES = {
    pybreaker.STATE_CLOSED: State.CLOSED,
    pybreaker.STATE_OPEN: State.OPEN,
    pybreaker.STATE_HALF_OPEN: State.HALF_OPEN,
}


class SharedMemoryStorage(pybreaker.CircuitBreakerStorage):
    """A `pybreaker.CircuitBreakerStorage` whose every read and write is the shared page.

    So pybreaker's own accessors (``current_state``, ``fail_counter``) and any code written
    against pybreaker see what every process of the worker sees.
    """

    def __init__(self, shared: SharedBreakerState) -> None:
        super().__init__("shared-memory")
        self.shared = shared

    @property
    def state(self) -> str:
        state, _ = self.shared.gate_view()
        return _NAMES[state]

    @state.setter
    def state(self, state: str) -> None:
        self._set("state", _STATES[state])

    def increment_counter(self) -> None:
        self.shared.update(_increment_fail_counter)

    def reset_counter(self) -> None:
        self._set("fail_counter", 0)

    def increment_success_counter(self) -> None:
        self.shared.update(_increment_success_counter)

    def reset_success_counter(self) -> None:
        self._set("success_counter", 0)

    def _set(self, name: str, value: object) -> None:
        self.shared.update(lambda fields: setattr(fields, name, value))

    @property
    def counter(self) -> int:
        return self.shared.snapshot().fail_counter

    @property
    def success_counter(self) -> int:
        return self.shared.snapshot().success_counter

    @property
    def opened_at(self) -> datetime | None:
        opened_at = self.shared.snapshot().opened_at
        return datetime.fromtimestamp(opened_at, UTC) if opened_at else None

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._set("opened_at", value.timestamp())


def _increment_fail_counter(fields: BreakerFields) -> None:
    fields.fail_counter += 1


def _increment_success_counter(fields: BreakerFields) -> None:
    fields.success_counter += 1
