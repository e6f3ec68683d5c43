"""One breaker's fields in shared memory, so every process of a worker sees one circuit."""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import mmap
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ("MAX_WINDOW", "BreakerFields", "BreakerSnapshot", "SharedBreakerState", "State")

MAX_WINDOW = 1024
"""Largest sliding window of call outcomes the shared page can hold."""

_TRIAL_ID_SIZE = 64
_SPINS = 10_000
T = TypeVar("T")


class State(enum.IntEnum):
    """The breaker's states, as stored in shared memory; names as in the contract."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    FORCED_OPEN = 3
    """Set by a person (``celery control circuit_open``): stays open until reset."""
    FORCED_CLOSED = 4
    """Set by a person: runs everything, never trips, until reset."""

    @property
    def flowing(self) -> bool:
        """Whether the worker fetches freely in this state."""
        return self in (State.CLOSED, State.FORCED_CLOSED)


class BreakerFields(ctypes.Structure):
    """The shared page. Written only inside `SharedBreakerState.transaction()`."""

    _fields_ = (
        ("seq", ctypes.c_uint64),  # seqlock: odd while a writer is inside
        ("version", ctypes.c_uint64),  # bumped when what a watcher sees changes
        ("state", ctypes.c_uint8),
        ("fail_counter", ctypes.c_uint32),  # consecutive failures
        ("success_counter", ctypes.c_uint32),
        ("trips", ctypes.c_uint32),
        ("consecutive_trips", ctypes.c_uint32),  # drives the open-period backoff
        ("opened_at", ctypes.c_double),  # wall clock, for people
        ("open_period", ctypes.c_double),  # seconds
        # time.monotonic() (system-wide on Linux): end of the open period, or the half-open
        # trial's deadline.
        ("open_until", ctypes.c_double),
        ("trial_id", ctypes.c_char * _TRIAL_ID_SIZE),
        ("window_len", ctypes.c_uint32),
        ("window_pos", ctypes.c_uint32),
        ("window_failures", ctypes.c_uint32),
        ("window", ctypes.c_uint8 * MAX_WINDOW),
        ("paused_since", ctypes.c_double),  # time.monotonic() when fetching last stopped
        ("paused_seconds", ctypes.c_double),  # completed pauses, summed
        ("trial_successes", ctypes.c_uint64),
        ("trial_failures", ctypes.c_uint64),
        ("successes_total", ctypes.c_uint64),
        ("failures_total", ctypes.c_uint64),
        ("refused_total", ctypes.c_uint64),
        ("handed_back_total", ctypes.c_uint64),
    )

    seq: int
    version: int
    state: int
    fail_counter: int
    success_counter: int
    trips: int
    consecutive_trips: int
    opened_at: float
    open_period: float
    open_until: float
    trial_id: bytes
    window_len: int
    window_pos: int
    window_failures: int
    window: ctypes.Array[ctypes.c_uint8]
    paused_since: float
    paused_seconds: float
    trial_successes: int
    trial_failures: int
    successes_total: int
    failures_total: int
    refused_total: int
    handed_back_total: int


@dataclass(frozen=True)
class BreakerSnapshot:
    """A consistent copy of the shared page, for reports and tests."""

    version: int
    state: State
    fail_counter: int
    success_counter: int
    trips: int
    consecutive_trips: int
    opened_at: float | None
    open_period: float
    open_until: float
    trial_id: str | None
    window_calls: int
    window_failures: int
    paused_seconds: float
    """Seconds spent not fetching, including the pause going on now."""
    trial_successes: int
    trial_failures: int
    successes_total: int
    failures_total: int
    refused_total: int
    handed_back_total: int


def _visible(f: BreakerFields) -> tuple[int, ...]:
    """What a watcher of the breaker cares about; a change here bumps `version`."""
    return (f.state, f.fail_counter, f.trips, f.window_failures)


def _gate_fields(f: BreakerFields) -> tuple[State, float]:
    return State(f.state), f.open_until


def _snapshot(f: BreakerFields) -> BreakerSnapshot:
    return BreakerSnapshot(
        version=f.version,
        state=State(f.state),
        fail_counter=f.fail_counter,
        success_counter=f.success_counter,
        trips=f.trips,
        consecutive_trips=f.consecutive_trips,
        opened_at=f.opened_at or None,
        open_period=f.open_period,
        open_until=f.open_until,
        trial_id=f.trial_id.decode() or None,
        window_calls=f.window_len,
        window_failures=f.window_failures,
        paused_seconds=f.paused_seconds
        + (0.0 if State(f.state).flowing else time.monotonic() - f.paused_since),
        trial_successes=f.trial_successes,
        trial_failures=f.trial_failures,
        successes_total=f.successes_total,
        failures_total=f.failures_total,
        refused_total=f.refused_total,
        handed_back_total=f.handed_back_total,
    )


def _account_pause(f: BreakerFields, *, was_flowing: bool) -> None:
    flowing = State(f.state).flowing
    if was_flowing and not flowing:
        f.paused_since = time.monotonic()
    elif flowing and not was_flowing:
        f.paused_seconds += time.monotonic() - f.paused_since


_instances: weakref.WeakSet[SharedBreakerState] = weakref.WeakSet()


def _reset_thread_locks_after_fork() -> None:
    for instance in _instances:
        instance._thread_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_thread_locks_after_fork)


class SharedBreakerState:
    """A page of shared memory and the lock that guards it.

    Created in the worker's main process before the pool forks, so prefork children
    (including those that replace others under ``--max-tasks-per-child``) inherit the same
    mapping. Writers take a thread lock and a POSIX record lock on the backing file: the
    kernel releases the record lock if its holder is SIGKILLed, so a dead child never
    wedges the worker. Readers take no lock; they retry on a torn read (a seqlock), which
    keeps the consumption gate's per-poll check a plain memory read.
    """

    def __init__(self) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="circuitgate-", dir=directory)
        os.unlink(path)  # nothing to clean up, whatever kills us
        size = ctypes.sizeof(BreakerFields)
        os.ftruncate(fd, size)
        self._fd = fd
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED)
        self._fields = BreakerFields.from_buffer(self._map)
        self._thread_lock = threading.Lock()
        _instances.add(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[BreakerFields]:
        """Hold the breaker exclusively across threads and processes, and publish the result."""
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            fields = self._fields
            if fields.seq & 1:
                fields.seq += 1  # a writer was killed inside; its writes stand, finish them
            before = _visible(fields)
            fields.seq += 1
            try:
                yield fields
            finally:
                if _visible(fields) != before:
                    fields.version += 1
                    _account_pause(fields, was_flowing=State(before[0]).flowing)
                fields.seq += 1
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _consistent(self, read: Callable[[BreakerFields], T]) -> T:
        """``read(fields)`` from a moment when no writer was inside, without taking the lock.

        After many tries the writer is taken to be dead (SIGKILLed mid-write); reading
        under the lock then repairs the page.
        """
        fields = self._fields
        for _ in range(_SPINS):
            seq = fields.seq
            if not seq & 1:
                value = read(fields)
                if fields.seq == seq:
                    return value
            os.sched_yield()
        with self.transaction() as locked:
            return read(locked)

    def version(self) -> int:
        """The change counter alone: one aligned 64-bit read, cheap enough to poll."""
        return self._fields.version

    def gate_view(self) -> tuple[State, float]:
        """State and end of the open period: all that the per-poll gate check reads."""
        return self._consistent(_gate_fields)

    def snapshot(self) -> BreakerSnapshot:
        """Every field, read consistently without blocking writers."""
        return self._consistent(_snapshot)

    def close(self) -> None:
        """Unmap the page; the memory goes away with the last process that maps it."""
        _instances.discard(self)
        del self._fields
        self._map.close()
        os.close(self._fd)
