"""SharedBreakerState: one page, seen and changed atomically by forked processes."""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from typing import Any

import pytest

from circuitgate import shared_state
from circuitgate.shared_state import (
    CALLS_KEPT,
    SUCCESS_SLOTS,
    BreakerFields,
    Call,
    Hint,
    SharedBreakerState,
    State,
    token_key,
    token_label,
)

fork = multiprocessing.get_context("fork")


def _write(shared: SharedBreakerState, **values: object) -> None:
    def write(fields: BreakerFields) -> None:
        for name, value in values.items():
            setattr(fields, name, value)

    shared.update(write)


def _count_success(fields: BreakerFields) -> None:
    fields.successes_total += 1


def _increment(shared: SharedBreakerState, times: int) -> None:
    for _ in range(times):
        shared.update(_increment_slowly)


def _increment_slowly(fields: BreakerFields) -> None:
    value = fields.fail_counter
    os.sched_yield()  # widen the race a lost update would need
    fields.fail_counter = value + 1


def test_forked_children_share_one_page_and_lose_no_update() -> None:
    shared = SharedBreakerState()
    children = [fork.Process(target=_increment, args=(shared, 500)) for _ in range(4)]
    for child in children:
        child.start()
    _increment(shared, 500)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert shared.snapshot().fail_counter == 2500


@pytest.mark.parametrize("state", list(State))
def test_every_state_reads_back_as_itself(state: State) -> None:
    shared = SharedBreakerState()
    _write(shared, state=state, open_until=7.0, trial_key=9)
    assert shared.gate_view() == (state, 7.0)
    assert shared.gate_view()[0] is state
    assert shared.trial_view() == (state, 9)
    assert shared.snapshot().state is state


def test_version_moves_only_when_a_watcher_would_see_a_change() -> None:
    shared = SharedBreakerState()
    before = shared.snapshot().version
    shared.update(_count_success)
    assert shared.snapshot().version == before
    _write(shared, state=State.OPEN)
    assert shared.snapshot().version == before + 1


def _hold_lock_forever(
    shared: SharedBreakerState, ready: multiprocessing.synchronize.Event
) -> None:
    def hold(fields: BreakerFields) -> None:
        ready.set()
        signal.pause()

    shared.update(hold)


def test_a_child_killed_inside_a_transaction_does_not_wedge_the_others() -> None:
    shared = SharedBreakerState()
    ready = fork.Event()
    child = fork.Process(target=_hold_lock_forever, args=(shared, ready))
    child.start()
    assert ready.wait(10)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    _write(shared, trips=7)  # the kernel released the dead child's lock
    assert shared.snapshot().trips == 7


def _die_mid_write(shared: SharedBreakerState) -> None:
    def die(fields: BreakerFields) -> None:
        fields.trips = 3
        os.kill(os.getpid(), signal.SIGKILL)

    shared.update(die)


def test_a_writer_killed_mid_write_leaves_a_readable_page() -> None:
    shared = SharedBreakerState()
    child = fork.Process(target=_die_mid_write, args=(shared,))
    child.start()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert shared.snapshot().trips == 0  # a transaction that never returned wrote nothing
    assert shared.gate_view() == (State.CLOSED, 0.0)


def test_an_exception_inside_a_transaction_leaves_the_page_as_it_was() -> None:
    shared = SharedBreakerState()
    _write(shared, trips=2)

    def fail_half_way(fields: BreakerFields) -> None:
        fields.trips = 3
        fields.state = State.OPEN
        raise OverflowError("half way through")

    with pytest.raises(OverflowError):
        shared.update(fail_half_way)
    snapshot = shared.snapshot()
    assert (snapshot.trips, snapshot.state, snapshot.version) == (2, State.CLOSED, 1)


class _Alarm(Exception):
    pass


def _answer_whether_the_lock_is_free(shared: SharedBreakerState, ask: int, answer: int) -> None:
    while os.read(ask, 1) == b"?":
        try:
            fcntl.lockf(shared._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.write(answer, b"0")
        else:
            fcntl.lockf(shared._fd, fcntl.LOCK_UN)
            os.write(answer, b"1")


def _transactions_under_alarms(shared: SharedBreakerState, seconds: float) -> tuple[int, int]:
    """Transactions in a tight loop while a timer signal's handler raises every 100 µs of CPU;
    after each one it interrupted, another process checks that the record lock is free.

    The handler raises wherever the signal lands inside the transaction machinery, never in
    this loop's own frame, so the loop itself always survives to count, check and stop.
    Returns (interrupted, left locked).
    """

    def raise_inside_transactions(signum: int, frame: types.FrameType | None) -> None:
        if frame is not None and frame.f_code is not loop:
            raise _Alarm()

    loop = sys._getframe().f_code
    ask_read, ask = os.pipe()
    answer, answer_write = os.pipe()
    checker = fork.Process(
        target=_answer_whether_the_lock_is_free, args=(shared, ask_read, answer_write)
    )
    checker.start()
    interrupted = left_locked = 0
    previous = signal.signal(signal.SIGVTALRM, raise_inside_transactions)
    signal.setitimer(signal.ITIMER_VIRTUAL, 0.0001, 0.0001)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            shared.update(_count_success)
        except _Alarm:
            interrupted += 1
            os.write(ask, b"?")
            left_locked += os.read(answer, 1) == b"0"
    signal.setitimer(signal.ITIMER_VIRTUAL, 0)
    signal.signal(signal.SIGVTALRM, previous)
    os.write(ask, b".")
    checker.join(10)
    for fd in (ask, ask_read, answer, answer_write):
        os.close(fd)
    return interrupted, left_locked


@pytest.mark.parametrize("other_thread", [False, True], ids=["alone", "with-a-thread"])
def test_a_signal_handler_raising_inside_transactions_never_leaves_the_lock_held(
    other_thread: bool,
) -> None:
    """billiard raises SoftTimeLimitExceeded from a signal handler; here SIGVTALRM does
    (not SIGALRM, which pytest-timeout owns). With a second thread alive (a trial's
    heartbeat, the threads pool) blocking signals in this thread would not help: the kernel
    hands the signal to the other thread and Python still runs the handler in this one."""
    shared = SharedBreakerState()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    if other_thread:
        thread.start()
    try:
        interrupted, left_locked = _transactions_under_alarms(shared, 2.0)
    finally:
        stop.set()
    if other_thread:
        thread.join()
    assert interrupted > 100  # the handler did raise, often, around transactions
    assert left_locked == 0
    assert shared._thread_lock.acquire(blocking=False)  # nor the thread lock
    shared._thread_lock.release()
    assert shared.snapshot().successes_total > 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == set()  # every signal unblocked again


def test_a_long_non_ascii_token_is_stored_decodably_and_compared_whole() -> None:
    shared = SharedBreakerState()
    token = "ü" * 40  # 80 bytes: the old 64-byte cut split a character
    _write(shared, trial_id=token_label(token), trial_key=token_key(token))
    snapshot = shared.snapshot()
    assert snapshot.trial_id == "ü" * 32
    assert shared.trial_view() == (State.CLOSED, token_key(token))
    assert token_key("ü" * 40) != token_key("ü" * 41)  # equal 64-byte prefixes, two tasks


class _SoftLimit(Exception):
    pass


def _hold_the_lock_then_signal(shared: SharedBreakerState, held: int, seconds: float) -> None:
    fcntl.lockf(shared._fd, fcntl.LOCK_EX)
    os.write(held, b"x")
    time.sleep(seconds / 2)
    os.kill(os.getppid(), signal.SIGUSR1)
    time.sleep(seconds / 2)
    fcntl.lockf(shared._fd, fcntl.LOCK_UN)


def _one_transaction(shared: SharedBreakerState) -> None:
    shared.update(_count_success)


def test_a_signal_while_waiting_for_the_lock_interrupts_the_wait_and_leaks_nothing() -> None:
    """billiard's soft time limit may fire while a child waits for another's lock; and
    Celery's SIGTERM must end a child that waits."""
    shared = SharedBreakerState()

    def soft_limit(signum: int, frame: types.FrameType | None) -> None:
        raise _SoftLimit()

    previous = signal.signal(signal.SIGUSR1, soft_limit)
    held, held_write = os.pipe()
    holder = fork.Process(target=_hold_the_lock_then_signal, args=(shared, held_write, 0.6))
    holder.start()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert os.read(held, 1) == b"x"
        with pytest.raises(_SoftLimit):
            _write(shared, trips=99)
        holder.join(10)
        assert _lock_is_free_elsewhere(shared)
        assert shared.snapshot().trips == 0
        holding = fork.Event()
        blocker = fork.Process(target=_hold_lock_forever, args=(shared, holding))
        blocker.start()
        assert holding.wait(10)
        waiter = fork.Process(target=_one_transaction, args=(shared,))
        waiter.start()
        time.sleep(0.2)  # let it reach lockf (if not, SIGTERM ends it sooner still)
        waiter.terminate()
        waiter.join(10)
        assert waiter.exitcode == -signal.SIGTERM, "SIGTERM did not end a process waiting"
        blocker.kill()
        blocker.join(10)
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGUSR1, previous)
        os.close(held)
        os.close(held_write)


def _lock_is_free_elsewhere(shared: SharedBreakerState) -> bool:
    ask_read, ask = os.pipe()
    answer, answer_write = os.pipe()
    checker = fork.Process(
        target=_answer_whether_the_lock_is_free, args=(shared, ask_read, answer_write)
    )
    checker.start()
    os.write(ask, b"?")
    free = os.read(answer, 1) == b"1"
    os.write(ask, b".")
    checker.join(10)
    for fd in (ask, ask_read, answer, answer_write):
        os.close(fd)
    return free


def _killed_half_way_through_publishing(shared: SharedBreakerState) -> None:
    real = ctypes.memmove

    def copy_half_then_die(dst: int, src: int, count: int) -> None:
        real(dst, src, count // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    ctypes.memmove = copy_half_then_die  # type: ignore[assignment]
    _write(shared, trips=5, window_failures=0, successes_total=10)


def test_a_writer_killed_while_publishing_leaves_the_page_it_had_found() -> None:
    shared = SharedBreakerState()
    _write(shared, trips=2, window_len=1, window_failures=1, successes_total=3)
    before = shared.snapshot()
    child = fork.Process(target=_killed_half_way_through_publishing, args=(shared,))
    child.start()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert shared.snapshot() == before  # whole, not half old and half new
    shared.update(_count_success)  # and the next writer starts from it
    after = shared.snapshot()
    assert (after.trips, after.window_failures, after.successes_total) == (2, 1, 4)


def _add_successes(shared: SharedBreakerState, times: int) -> None:
    for _ in range(times):
        shared.add_success(time.monotonic(), None)


def test_quiet_successes_of_many_processes_and_threads_are_all_counted() -> None:
    shared = SharedBreakerState()
    shared.update(_count_success)  # one counted the long way too
    children = [fork.Process(target=_add_successes, args=(shared, 300)) for _ in range(3)]
    threads = [threading.Thread(target=_add_successes, args=(shared, 300)) for _ in range(3)]
    for worker in [*children, *threads]:
        worker.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    for thread in threads:
        thread.join(30)
    assert shared.snapshot().successes_total == 1 + 6 * 300
    assert list(shared._page.slot_owners).count(os.getpid()) == 1  # one slot for the threads


def test_the_slots_of_dead_processes_are_taken_over_with_their_counts() -> None:
    shared = SharedBreakerState()
    for _ in range(SUCCESS_SLOTS + 6):  # more processes, one after the other, than slots
        child = fork.Process(target=_add_successes, args=(shared, 2))
        child.start()
        child.join(30)
        assert child.exitcode == 0
    assert shared.snapshot().successes_total == 2 * (SUCCESS_SLOTS + 6)


def test_with_every_slot_held_by_a_live_process_successes_count_under_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared_state, "_SLOT_RETRY_SECONDS", 0.0)  # look again every time
    shared = SharedBreakerState()
    for slot in range(SUCCESS_SLOTS):
        shared._page.slot_owners[slot] = os.getppid()  # alive, and not this process
    _add_successes(shared, 5)
    assert shared.snapshot().successes_total == 5
    assert sum(shared._page.slot_successes) == 0
    shared._page.slot_owners[3] = 0  # one comes free
    _add_successes(shared, 2)
    assert sum(shared._page.slot_successes) == 2  # and is used from then on
    assert shared.snapshot().successes_total == 7


def test_a_child_never_writes_to_the_slot_of_the_process_it_was_forked_from() -> None:
    shared = SharedBreakerState()
    # The parent takes a slot before the fork, as a main process may.
    shared.add_success(time.monotonic(), None)
    child = fork.Process(target=_add_successes, args=(shared, 1))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert sorted(shared._page.slot_successes)[-2:] == [1, 1]
    assert shared.snapshot().successes_total == 2


def test_hints_follow_the_live_copy_and_a_killed_writer_leaves_none_set_wrongly() -> None:
    shared = SharedBreakerState()
    assert shared.hints() == Hint.FLOWING  # a fresh page is closed
    shared.set_quiet_success(lambda fields: fields.fail_counter == 0)
    assert shared.hints() == Hint.FLOWING | Hint.QUIET_SUCCESS
    _write(shared, fail_counter=1)
    assert shared.hints() == Hint.FLOWING
    _write(shared, state=State.OPEN, fail_counter=0)
    assert shared.hints() == Hint.QUIET_SUCCESS
    child = fork.Process(target=_killed_half_way_through_publishing, args=(shared,))
    child.start()  # publishing trips=5 with everything else as it is
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert shared.hints() in (Hint.QUIET_SUCCESS, 0)  # never more than the live copy has
    _write(shared, state=State.CLOSED)
    assert shared.hints() == Hint.FLOWING | Hint.QUIET_SUCCESS  # the next publish restores


def _note_numbered(shared: SharedBreakerState, first: int, count: int) -> None:
    """Calls whose every field says its number, so a torn one would show."""
    for number in range(first, first + count):
        shared.note_call(float(number), float(number % 1000), failed=bool(number % 2))


def _whole(call: Call) -> bool:
    return call.seconds == call.ended % 1000 and call.failed == bool(int(call.ended) % 2)


def test_recent_calls_merge_every_process_in_the_order_they_ended() -> None:
    shared = SharedBreakerState()
    _note_numbered(shared, 5, 1)  # the main process has a slot; its children share another
    children = [fork.Process(target=_note_numbered, args=(shared, start, 3)) for start in (10, 20)]
    for child in children:
        child.start()
        child.join(30)
        assert child.exitcode == 0
    _note_numbered(shared, 15, 2)
    shared.note_call(30.0, None, failed=True)  # a lost child: how long it ran is unknown
    assert [c.ended for c in shared.recent_calls(100)] == [5, 10, 11, 12, 15, 16, 20, 21, 22, 30]
    assert [c.ended for c in shared.recent_calls(3)] == [21, 22, 30]
    assert shared.recent_calls(1) == [Call(30.0, None, True)]
    assert shared.calls_noted() == 10


def test_each_process_keeps_all_but_one_of_its_last_calls_kept() -> None:
    shared = SharedBreakerState()
    _note_numbered(shared, 0, CALLS_KEPT + 40)
    calls = shared.recent_calls(CALLS_KEPT * 2)
    # The oldest is the one a writer would be overwriting now: never read.
    assert [c.ended for c in calls] == list(range(41, CALLS_KEPT + 40))
    assert all(_whole(call) for call in calls)


def _note_forever(shared: SharedBreakerState, stop: Any) -> None:
    number = 0
    while not stop.is_set():
        _note_numbered(shared, number, 100)
        number += 100


def test_a_reader_never_sees_a_call_half_written_by_a_busy_writer() -> None:
    shared = SharedBreakerState()
    stop = fork.Event()
    writer = fork.Process(target=_note_forever, args=(shared, stop))
    writer.start()
    try:
        reads = 0
        deadline = time.monotonic() + 30
        while reads < 300 and time.monotonic() < deadline:
            calls = shared.recent_calls(CALLS_KEPT)
            if calls:
                reads += 1
                assert all(_whole(call) for call in calls)
                endings = [c.ended for c in calls]
                assert endings == list(range(int(endings[0]), int(endings[0]) + len(calls)))
        assert reads == 300
    finally:
        stop.set()
        writer.join(30)
    assert writer.exitcode == 0
