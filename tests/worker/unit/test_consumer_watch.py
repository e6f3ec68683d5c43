"""Where the consumer watch reaches into Celery: the solo pool, which runs tasks in the loop."""

from __future__ import annotations

import pytest
from celery.concurrency import prefork, solo

from circuitgate.consumer_pulse import ConsumerPulse, ConsumerStatus
from circuitgate.consumer_watch import _stamp_inline_tasks


def test_a_task_the_solo_pool_runs_inside_the_loop_is_stamped_while_it_runs() -> None:
    now = [100.0]
    pulse = ConsumerPulse(stall_seconds=2, liveness_seconds=4, now=lambda: now[0])
    pulse.connected()
    pool = solo.TaskPool(limit=1)
    undo = _stamp_inline_tasks(pool, pulse)
    assert undo is not None
    seen = []

    def task() -> None:
        now[0] += 60  # a minute in the loop's thread: no tick meanwhile
        seen.append((pulse.status(paused=False), pulse.live(), pulse.read().active_tasks))
        raise RuntimeError("and it fails")

    with pytest.raises(RuntimeError):  # an error escaping the task ends its run too
        pool.apply_async(task)
    assert seen == [(ConsumerStatus.CONSUMING, True, 1)]
    assert pulse.read().tick_age == 0 and pulse.read().inline_task_seconds is None
    undo()
    now[0] += 60
    assert pulse.status(paused=False) is ConsumerStatus.STALLED  # unwrapped: not stamped


def test_only_the_solo_pool_runs_tasks_inside_the_loop() -> None:
    pulse = ConsumerPulse(stall_seconds=2, liveness_seconds=4)
    assert _stamp_inline_tasks(prefork.TaskPool(limit=1), pulse) is None
