"""One breaker's fields in shared memory, so every process of a worker sees one circuit."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

__all__ = (
    "CALLS_KEPT",
    "CLAIMS_KEPT",
    "FAILURES_KEPT",
    "FAILURE_MESSAGE_SIZE",
    "HANDED_BACK_KEPT",
    "MAX_WINDOW",
    "SUCCESS_SLOTS",
    "BreakerFields",
    "BreakerSnapshot",
    "Call",
    "Hint",
    "SharedBreakerState",
    "State",
    "cut_label",
    "token_key",
    "token_label",
)

MAX_WINDOW = 1024
"""Largest sliding window of call outcomes the shared page can hold."""
CLAIMS_KEPT = 8
"""Trial claims of one half-open period remembered, so a replaced trial's late verdict counts."""

HANDED_BACK_KEPT = 64
"""Deliveries last handed back by a child, so the main process never hands one back twice
when the child dies before its verdict arrives; a delivery pushed out only risks a copy."""

SUCCESS_SLOTS = 64
"""Processes that count their quiet successes in a slot of their own (more share the lock)."""

CALLS_KEPT = 256
"""Calls each process remembers for the task-time evidence (`SharedBreakerState.recent_calls`)."""

FAILURES_KEPT = 4
"""Counted failures whose exception is remembered (type, and message when exposed)."""
FAILURE_MESSAGE_SIZE = 200
"""Bytes of an exception's message kept, at most."""
_FAILURE_TYPE_SIZE = 64

_STRIDE = 8  # uint64s in a 64-byte cache line
_SLOT_RETRY_SECONDS = 1.0
_TRIAL_ID_SIZE = 64
_SPINS = 10_000
T = TypeVar("T")


def token_of(task_id: object) -> str:
    """A task id as a token: a client may send any JSON as the id (Celery runs an integer
    one), and reading it must never raise in the consumer, which would end the worker."""
    if task_id is None:
        return ""
    return task_id if isinstance(task_id, str) else str(task_id)


def token_key(token: str) -> int:
    """A task's identity on the page: a 64-bit digest, so any id of any length fits.

    Tokens are only compared, never read back, so a digest serves where a prefix of a long
    id would make two tasks one. Never 0, which marks an empty slot. An id that is no
    string (Celery runs an integer one) is read as `token_of` reads it, on every path.
    """
    digest = hashlib.blake2b(
        token_of(token).encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") or 1


def cut_label(text: str, size: int) -> bytes:
    """``text`` in UTF-8, at most ``size`` bytes, cut between characters: a label that always
    decodes."""
    encoded = text.encode("utf-8", "surrogatepass")[:size]
    return encoded.decode("utf-8", "ignore").encode()


def token_label(token: str) -> bytes:
    """The token as people see it in a snapshot: at most 64 bytes, cut between characters."""
    return cut_label(token_of(token), _TRIAL_ID_SIZE)


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


class Hint(enum.IntFlag):
    """What the live copy lets the hot paths skip, published with it as one 64-bit word.

    A bit is cleared before the copy that lacks it is published and set after the copy that
    has it, so a reader that sees a bit set knows the live copy has it at that moment. A
    writer killed in between leaves a bit cleared, which only sends readers the long way
    until the next publish.
    """

    FLOWING = 1
    """The state is closed or forced closed: every task runs and the consumer fetches."""
    QUIET_SUCCESS = 2
    """A success changes nothing but the success total (`SharedBreakerState.add_success`)."""


class BreakerFields(ctypes.Structure):
    """The shared page. Written only inside `SharedBreakerState.update`."""

    _fields_ = (
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
        ("trial_id", ctypes.c_char * _TRIAL_ID_SIZE),  # for people: `token_label`
        ("trial_key", ctypes.c_uint64),  # the trial's `token_key`; 0: none
        # Who runs the trial now (inside `trial_running`), by process and thread; 0: no one.
        # While it runs, the claim is its own: another delivery of that id neither runs nor
        # gives it back, and the main process clears a killed process's run by its pid.
        ("runner_pid", ctypes.c_int64),
        ("runner_thread", ctypes.c_uint64),
        # Every `token_key` claimed as the trial since the last trip (a ring of CLAIMS_KEPT).
        ("claimed", ctypes.c_uint64 * CLAIMS_KEPT),
        ("claims", ctypes.c_uint32),  # claims since the last trip
        ("window_len", ctypes.c_uint32),
        ("window_pos", ctypes.c_uint32),
        ("window_failures", ctypes.c_uint32),
        ("window_slow", ctypes.c_uint32),  # slow calls in the window (``slow_call_seconds``)
        ("window", ctypes.c_uint8 * MAX_WINDOW),
        ("paused_since", ctypes.c_double),  # time.monotonic() when fetching last stopped
        ("paused_seconds", ctypes.c_double),  # completed pauses, summed
        ("trial_successes", ctypes.c_uint64),
        ("trial_failures", ctypes.c_uint64),
        ("successes_total", ctypes.c_uint64),
        ("failures_total", ctypes.c_uint64),
        ("refused_total", ctypes.c_uint64),
        ("handed_back_total", ctypes.c_uint64),
        # The `token_key` of the deliveries handed back, at handed_back_total % KEPT.
        ("handed_back", ctypes.c_uint64 * HANDED_BACK_KEPT),
        # The last counted failures, at (failures_total - 1) % FAILURES_KEPT: `cut_label`s.
        ("failure_types", (ctypes.c_char * _FAILURE_TYPE_SIZE) * FAILURES_KEPT),
        ("failure_messages", (ctypes.c_char * FAILURE_MESSAGE_SIZE) * FAILURES_KEPT),
        ("failure_at", ctypes.c_double * FAILURES_KEPT),  # wall clock
        # With a probe (``circuitgate_probe``): open_until stays infinite after a trip, and the
        # probe is due at probe_due (monotonic; 0: none due); probe_until is the deadline of
        # the probe that runs (0: none runs), probes the number of probes started.
        ("probe_due", ctypes.c_double),
        ("probe_until", ctypes.c_double),
        ("probes", ctypes.c_uint32),
        ("probe_successes", ctypes.c_uint64),
        ("probe_failures", ctypes.c_uint64),
    )

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
    trial_key: int
    runner_pid: int
    runner_thread: int
    claimed: ctypes.Array[ctypes.c_uint64]
    claims: int
    window_len: int
    window_pos: int
    window_failures: int
    window_slow: int
    window: ctypes.Array[ctypes.c_uint8]
    paused_since: float
    paused_seconds: float
    trial_successes: int
    trial_failures: int
    successes_total: int
    failures_total: int
    refused_total: int
    handed_back_total: int
    handed_back: ctypes.Array[ctypes.c_uint64]
    failure_types: ctypes.Array[ctypes.Array[ctypes.c_char]]
    failure_messages: ctypes.Array[ctypes.Array[ctypes.c_char]]
    failure_at: ctypes.Array[ctypes.c_double]
    probe_due: float
    probe_until: float
    probes: int
    probe_successes: int
    probe_failures: int

    def note_failure(self, kind: str, message: str | None, at: float) -> None:
        """Remember a counted failure (inside a transaction, after counting it in
        ``failures_total``); a message of None is not kept (not exposed)."""
        slot = (self.failures_total - 1) % FAILURES_KEPT
        self.failure_types[slot].value = cut_label(kind, _FAILURE_TYPE_SIZE)
        self.failure_messages[slot].value = cut_label(message or "", FAILURE_MESSAGE_SIZE)
        self.failure_at[slot] = at

    def last_failures(self) -> tuple[tuple[str, str | None, float], ...]:
        """The remembered failures, oldest first: (type, message or None, wall time)."""
        count = min(self.failures_total, FAILURES_KEPT)
        notes = []
        for number in range(self.failures_total - count, self.failures_total):
            slot = number % FAILURES_KEPT
            message = self.failure_messages[slot].value.decode("utf-8", "replace")
            kind = self.failure_types[slot].value.decode("utf-8", "replace")
            notes.append((kind, message or None, self.failure_at[slot]))
        return tuple(notes)


@dataclasses.dataclass(frozen=True)
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
    trial_claims: int
    """Trials claimed since the last trip: more than one only when one was given up on."""
    trial_runner: int | None
    """The pid of the process running the trial now (inside `trial_running`), if any."""
    window_calls: int
    window_failures: int
    window_slow_calls: int
    paused_seconds: float
    """Seconds spent not fetching, including the pause going on now."""
    trial_successes: int
    trial_failures: int
    successes_total: int
    failures_total: int
    refused_total: int
    handed_back_total: int
    last_failures: tuple[tuple[str, str | None, float], ...] = ()
    """The last counted failures, oldest first: exception type, message (None unless
    exposed), when (wall clock)."""
    probe_successes: int = 0
    probe_failures: int = 0
    probe_due: float = 0.0
    """When the probe is due (monotonic; 0: none is), with ``circuitgate_probe``."""
    probe_until: float = 0.0
    """The running probe's deadline (monotonic; 0: none runs)."""


def _visible(f: BreakerFields) -> tuple[int, ...]:
    """What a watcher of the breaker cares about; a change here bumps `version`."""
    return (f.state, f.fail_counter, f.trips, f.window_failures, f.probe_successes)


_STATES = tuple(State)
"""Each state at the index of its value: a tuple index, where ``State(value)`` would cost
as much again as the rest of the per-poll read."""


def _gate_fields(f: BreakerFields) -> tuple[State, float]:
    return _STATES[f.state], f.open_until


def _trial_fields(f: BreakerFields) -> tuple[State, int]:
    return _STATES[f.state], f.trial_key


@dataclasses.dataclass(frozen=True)
class Call:
    """One finished call, as a process noted it: when it ended (``time.monotonic()``), how
    long it ran (None: unknown, as for a pool child that was lost), and whether it failed."""

    ended: float
    seconds: float | None
    failed: bool


class _NotedCall(ctypes.Structure):
    _fields_ = (("ended", ctypes.c_double), ("seconds", ctypes.c_float), ("failed", ctypes.c_uint8))


_NOTED = struct.Struct("dfB3x")  # _NotedCall's layout, to read a slot's log in one copy
assert _NOTED.size == ctypes.sizeof(_NotedCall)


class _Page(ctypes.Structure):
    """Two copies of the fields; ``seq`` counts publishes and its parity names the live one.

    A writer fills the other copy and then flips ``seq`` (one aligned 64-bit store), so a
    writer SIGKILLed half way through leaves only the copy nobody reads torn. ``hints``
    (`Hint`) let the per-task paths decide from one word; each process adds its quiet
    successes to a slot of its own, without the lock (one writer per slot), and notes its
    finished calls in a log of its own the same way: ``slot_noted`` counts them, the call
    numbered ``n`` is at ``n % CALLS_KEPT`` in the slot's part of ``slot_calls``, written
    before the count moves past it.
    """

    _fields_ = (
        ("seq", ctypes.c_uint64),
        ("hints", ctypes.c_uint64),
        ("copies", BreakerFields * 2),
        ("slot_owners", ctypes.c_int64 * SUCCESS_SLOTS),  # pid; 0: free
        # A cache line per slot (index slot * _STRIDE), so children do not fight over one.
        ("slot_successes", ctypes.c_uint64 * (SUCCESS_SLOTS * _STRIDE)),
        ("slot_noted", ctypes.c_uint64 * (SUCCESS_SLOTS * _STRIDE)),
        ("slot_calls", _NotedCall * (SUCCESS_SLOTS * CALLS_KEPT)),
    )

    seq: int
    hints: int
    copies: ctypes.Array[BreakerFields]
    slot_owners: ctypes.Array[ctypes.c_int64]
    slot_successes: ctypes.Array[ctypes.c_uint64]
    slot_noted: ctypes.Array[ctypes.c_uint64]
    slot_calls: ctypes.Array[_NotedCall]


_SIZE = ctypes.sizeof(_Page)


def _snapshot(f: BreakerFields) -> BreakerSnapshot:
    state = _STATES[f.state]
    return BreakerSnapshot(
        version=f.version,
        state=state,
        fail_counter=f.fail_counter,
        success_counter=f.success_counter,
        trips=f.trips,
        consecutive_trips=f.consecutive_trips,
        opened_at=f.opened_at or None,
        open_period=f.open_period,
        open_until=f.open_until,
        trial_id=f.trial_id.decode("utf-8", "replace") or None,
        trial_claims=f.claims,
        trial_runner=f.runner_pid or None,
        window_calls=f.window_len,
        window_failures=f.window_failures,
        window_slow_calls=f.window_slow,
        paused_seconds=f.paused_seconds
        + (0.0 if state.flowing else time.monotonic() - f.paused_since),
        trial_successes=f.trial_successes,
        trial_failures=f.trial_failures,
        successes_total=f.successes_total,
        failures_total=f.failures_total,
        refused_total=f.refused_total,
        handed_back_total=f.handed_back_total,
        last_failures=f.last_failures(),
        probe_successes=f.probe_successes,
        probe_failures=f.probe_failures,
        probe_due=f.probe_due,
        probe_until=f.probe_until,
    )


def _publish_hints(_: BreakerFields) -> None:
    """An empty transaction: its publish computes the hints afresh."""


def _count_success(f: BreakerFields) -> None:
    f.successes_total += 1


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
        instance._slot_lock = threading.Lock()
        instance._slot = None  # the parent's slot is the parent's
        instance._slot_retry_at = 0.0


def _never_quiet(_: BreakerFields) -> bool:
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


os.register_at_fork(after_in_child=_reset_thread_locks_after_fork)


class SharedBreakerState:
    """A page of shared memory and the lock that guards it.

    Created in the worker's main process before the pool forks, so prefork children
    (including those that replace others under ``--max-tasks-per-child``) inherit the same
    mapping. Writers take a thread lock and a POSIX record lock on the backing file: the
    kernel releases the record lock if its holder is SIGKILLed, so a dead child never
    wedges the worker. Readers take no lock; they read the live copy of two and retry if a
    publish happened meanwhile, which keeps the consumption gate's per-poll check a plain
    memory read.
    """

    def __init__(self) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="circuitgate-", dir=directory)
        os.unlink(path)  # nothing to clean up, whatever kills us
        os.ftruncate(fd, _SIZE)
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED)
        self._page = _Page.from_buffer(self._map)
        # Views of the two copies, made once: the gate reads one on every poll.
        self._copies: tuple[BreakerFields, BreakerFields] = tuple(self._page.copies)
        self._thread_lock = threading.Lock()
        self._slot_lock = threading.Lock()
        self._slot: int | None = None
        """This process's slot; None: not taken yet, or none free until ``_slot_retry_at``."""
        self._slot_retry_at = 0.0
        self._quiet_success: Callable[[BreakerFields], bool] = _never_quiet
        _instances.add(self)
        self.update(_publish_hints)

    def set_quiet_success(self, quiet: Callable[[BreakerFields], bool]) -> None:
        """Tell the page when a success changes nothing but its total (the breaker's rules
        say so), and publish the hints again; set before the pool forks."""
        self._quiet_success = quiet
        self.update(_publish_hints)

    def update(self, body: Callable[[BreakerFields], T]) -> T:
        """``body(fields)`` holding the breaker exclusively across threads and processes;
        its changes are published when it returns, and its result returned.

        The body works on a copy: an exception (or a SIGKILL) inside leaves the page as it
        was. A signal handler may raise anywhere here (billiard's soft time limit, for a
        signal any thread received): the thread lock is taken and let go by ``with`` (no
        bytecode runs between acquiring and being protected), the record lock is taken
        inside ``try`` and always let go in ``finally`` (unlocking a lock not held does
        nothing), and the publish is one store of ``seq`` after filling a copy nobody reads.
        So no signal is blocked and waiting for the lock stays interruptible. A callback and
        not a context manager, whose own frames would let a handler raise with the lock held.
        """
        with self._thread_lock:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
                page = self._page
                live = page.seq & 1
                work = BreakerFields.from_buffer_copy(self._copies[live])
                result = body(work)
                self._publish(page, self._copies[live], self._copies[1 - live], work)
                return result
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _publish(
        self, page: _Page, live: BreakerFields, spare: BreakerFields, work: BreakerFields
    ) -> None:
        before = _visible(live)
        if _visible(work) != before:
            work.version = live.version + 1
            _account_pause(work, was_flowing=State(before[0]).flowing)
        hints = int(Hint.FLOWING) if _STATES[work.state].flowing else 0
        if self._quiet_success(work):
            hints |= Hint.QUIET_SUCCESS
        page.hints &= hints  # what the new copy lacks goes before it is live
        ctypes.memmove(ctypes.addressof(spare), ctypes.addressof(work), ctypes.sizeof(work))
        page.seq += 1  # readers now see the new copy; the old one is the next spare
        page.hints = hints  # what it has comes after

    def hints(self) -> int:
        """What the live copy lets a hot path skip (`Hint` bits): one aligned 64-bit read."""
        return self._page.hints

    def add_success(self, ended: float, seconds: float | None) -> None:
        """Count a success that changes nothing else (`Hint.QUIET_SUCCESS`), without the lock,
        and note the call (`note_call`).

        Each process adds to a slot of its own, taken once under the lock (a dead process's
        slot is taken over with its count); threads of one process share it under a thread
        lock. With every slot taken by a live process, it counts under the lock instead (and
        looks for a slot again a second later).
        """
        with self._slot_lock:
            slot = self._own_slot()
            if slot is not None:
                self._page.slot_successes[slot * _STRIDE] += 1
                self._note(slot, ended, seconds, failed=False)
                return
        self.update(_count_success)

    def note_call(self, ended: float, seconds: float | None, *, failed: bool) -> None:
        """Add a finished call to this process's log, the task-time evidence `recent_calls`
        reads: in the process's slot, without the lock. A process that finds no free slot
        (more than `SUCCESS_SLOTS` at once) notes nothing: evidence, not the breaker's count.
        """
        with self._slot_lock:
            slot = self._own_slot()
            if slot is not None:
                self._note(slot, ended, seconds, failed=failed)

    def _own_slot(self) -> int | None:
        """This process's slot, taken now if it has none (under the slot lock)."""
        if self._slot is None and time.monotonic() >= self._slot_retry_at:
            self.update(self._take_slot)
        return self._slot

    def _note(self, slot: int, ended: float, seconds: float | None, *, failed: bool) -> None:
        page = self._page
        noted = page.slot_noted[slot * _STRIDE]
        call = page.slot_calls[slot * CALLS_KEPT + noted % CALLS_KEPT]
        call.ended = ended
        call.seconds = math.nan if seconds is None else seconds
        call.failed = failed
        page.slot_noted[slot * _STRIDE] = noted + 1  # the call is whole before it counts

    def calls_noted(self) -> int:
        """Calls noted by every process so far: a cheap sign that the evidence moved."""
        noted = self._page.slot_noted
        return sum(noted[slot * _STRIDE] for slot in range(SUCCESS_SLOTS))

    def recent_calls(self, limit: int) -> list[Call]:
        """The last ``limit`` calls any process noted, oldest first; without the lock.

        A slot's log is copied in one go between two reads of its count, and the calls the
        writer may have been overwriting meanwhile (the oldest: one, and one more for each
        call it noted during the copy) are left out, so every call returned was whole. A slot
        thus gives at most ``CALLS_KEPT - 1``; its calls are in the order they ended (a slot
        passes to a new process only after its owner died).
        """
        page = self._page
        log_size = CALLS_KEPT * _NOTED.size
        base = ctypes.addressof(page.slot_calls)
        calls = []
        for slot in range(SUCCESS_SLOTS):
            before = page.slot_noted[slot * _STRIDE]
            if not before:
                continue
            log = ctypes.string_at(base + slot * log_size, log_size)
            after = page.slot_noted[slot * _STRIDE]
            for number in range(max(after - CALLS_KEPT + 1, before - limit, 0), before):
                ended, seconds, failed = _NOTED.unpack_from(log, number % CALLS_KEPT * _NOTED.size)
                calls.append(Call(ended, None if math.isnan(seconds) else seconds, bool(failed)))
        calls.sort(key=lambda call: call.ended)
        return calls[-limit:]

    def _take_slot(self, _: BreakerFields) -> None:
        """Inside a transaction: a free slot or a dead process's, remembered at once (a
        signal raising later in the transaction leaves it ours, not lost); none: try again
        in a second."""
        owners = self._page.slot_owners
        for slot in range(SUCCESS_SLOTS):
            if owners[slot] == 0 or not _alive(owners[slot]):
                owners[slot] = os.getpid()
                self._slot = slot
                return
        self._slot_retry_at = time.monotonic() + _SLOT_RETRY_SECONDS

    def read(self, read: Callable[[BreakerFields], T]) -> T:
        """``read(fields)`` from a moment when no publish happened, without taking the lock.

        A writer only ever fills the copy not in use, so a read of the live copy is whole
        unless ``seq`` moved meanwhile (a second writer may then have refilled it): retry.
        After many tries (writers without pause) read under the lock.
        """
        page, copies = self._page, self._copies
        for _ in range(_SPINS):
            seq = page.seq
            value = read(copies[seq & 1])
            if page.seq == seq:
                return value
            os.sched_yield()
        return self.update(read)

    def version(self) -> int:
        """The change counter alone: one aligned 64-bit read, cheap enough to poll."""
        return self._copies[self._page.seq & 1].version

    def gate_view(self) -> tuple[State, float]:
        """State and end of the open period: all that the per-poll gate check reads."""
        return self.read(_gate_fields)

    def trial_view(self) -> tuple[State, int]:
        """State and the trial's `token_key`: enough to tell whether a task is the trial."""
        return self.read(_trial_fields)

    def snapshot(self) -> BreakerSnapshot:
        """Every field, read consistently without blocking writers; the success total
        includes the slots' (each only grows, so the sum never goes back)."""
        snapshot = self.read(_snapshot)
        quiet = sum(self._page.slot_successes)
        if not quiet:
            return snapshot
        return dataclasses.replace(snapshot, successes_total=snapshot.successes_total + quiet)

    def close(self) -> None:
        """Unmap the page; the memory goes away with the last process that maps it."""
        _instances.discard(self)
        del self._page, self._copies
        self._map.close()
        os.close(self._fd)
