"""SharedBreakerState: one page, seen and changed atomically by forked processes."""

from __future__ import annotations

import multiprocessing
import os
import signal

from circuitgate.shared_state import SharedBreakerState, State

fork = multiprocessing.get_context("fork")


def _increment(shared: SharedBreakerState, times: int) -> None:
    for _ in range(times):
        with shared.transaction() as fields:
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


def test_version_moves_only_when_a_watcher_would_see_a_change() -> None:
    shared = SharedBreakerState()
    before = shared.snapshot().version
    with shared.transaction() as fields:
        fields.successes_total += 1
    assert shared.snapshot().version == before
    with shared.transaction() as fields:
        fields.state = State.OPEN
    assert shared.snapshot().version == before + 1


def _hold_lock_forever(
    shared: SharedBreakerState, ready: multiprocessing.synchronize.Event
) -> None:
    with shared.transaction():
        ready.set()
        signal.pause()


def test_a_child_killed_inside_a_transaction_does_not_wedge_the_others() -> None:
    shared = SharedBreakerState()
    ready = fork.Event()
    child = fork.Process(target=_hold_lock_forever, args=(shared, ready))
    child.start()
    assert ready.wait(10)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    with shared.transaction() as fields:  # the kernel released the dead child's lock
        fields.trips = 7
    assert shared.snapshot().trips == 7


def _die_mid_write(shared: SharedBreakerState) -> None:
    with shared.transaction() as fields:
        fields.trips = 3
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_writer_killed_mid_write_leaves_a_readable_page() -> None:
    shared = SharedBreakerState()
    child = fork.Process(target=_die_mid_write, args=(shared,))
    child.start()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert shared.snapshot().trips == 3
    assert shared.gate_view() == (State.CLOSED, 0.0)
