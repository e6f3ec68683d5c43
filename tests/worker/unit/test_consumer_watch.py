"""Where the consumer watch reaches into Celery and kombu: redis-py's bound, the solo pool."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.concurrency import prefork, solo

from circuitgate.consumer_pulse import ConsumerPulse, ConsumerStatus
from circuitgate.consumer_watch import _stamp_inline_tasks, bound_redis_calls


def app(url: str, **options: Any) -> Celery:
    return Celery(broker=url, set_as_current=False, broker_transport_options=options)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"])
def test_redis_calls_get_a_bound(url: str) -> None:
    celery = app(url, visibility_timeout=60)
    bound_redis_calls(celery, 7.5)
    assert celery.conf.broker_transport_options == {"visibility_timeout": 60, "socket_timeout": 7.5}
    with celery.connection_for_read() as connection:
        assert connection.transport_options["socket_timeout"] == 7.5


def test_a_bound_the_user_chose_is_kept_even_none() -> None:
    celery = app("redis://127.0.0.1:1/0", socket_timeout=None)
    bound_redis_calls(celery, 7.5)
    assert celery.conf.broker_transport_options == {"socket_timeout": None}


@pytest.mark.parametrize("url", ["sqs://", "amqp://guest@127.0.0.1:1//", "memory://"])
def test_other_transports_are_left_alone(url: str) -> None:
    celery = app(url)
    bound_redis_calls(celery, 7.5)
    assert celery.conf.broker_transport_options == {}


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
