"""The broker check's verdict: a prompt answer (an error reply too) counts for a few
intervals, a timeout or a connection that hangs never does, nothing is asked while the loop
ticks; and liveness holds "stuck" once the broker answered during the stall."""

from __future__ import annotations

import threading

from circuitgate.broker_check import BrokerCheck, Liveness
from circuitgate.consumer_pulse import ConsumerPulse


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_counts_for_three_intervals_and_only_asked_while_wanted() -> None:
    clock, calls, wanted = Clock(), [], [False]
    check = BrokerCheck(lambda: calls.append(clock.now), lambda: wanted[0], now=clock)
    check.check()
    assert calls == [] and not check.answered_within(60)  # the loop ticks: nothing asked
    wanted[0] = True
    check.check()
    assert calls == [100.0] and check.answered_within(60)
    clock.now += 3 * check.interval
    assert check.answered_within(60) and not check.answered_within(2.9)
    clock.now += 0.1
    assert not check.answered_within(60)


class RedisTimeoutError(Exception):
    """Named as redis-py's, which is no TimeoutError."""


RedisTimeoutError.__name__ = "TimeoutError"


def test_an_error_reply_is_an_answer_a_timeout_or_a_slow_one_is_not() -> None:
    clock = Clock()

    def fails(error: Exception, seconds: float = 0.0) -> None:
        clock.now += seconds
        raise error

    for error, seconds, answered in [
        (ConnectionError("max number of clients reached"), 0.0, True),
        (TimeoutError("timed out"), 0.0, False),
        (RedisTimeoutError("Timeout reading from socket"), 0.0, False),
        (ConnectionError("refused, after a retry"), 2.5, False),
    ]:
        clock.now += 60  # the last verdict is old
        check = BrokerCheck(lambda e=error, s=seconds: fails(e, s), lambda: True, now=clock)
        check.check()
        assert check.answered_within(60) is answered, error


def test_a_connection_that_hangs_holds_only_the_checks_thread() -> None:
    entered, release = threading.Event(), threading.Event()

    def hangs() -> None:
        entered.set()
        release.wait(30)

    check = BrokerCheck(hangs, lambda: True, interval=0.01)
    check.start()
    assert entered.wait(10)
    assert not check.answered_within(60)  # asked and waiting: no answer yet
    release.set()
    check.stop()


def test_stuck_holds_until_the_loop_ticks_though_the_broker_freezes_later() -> None:
    clock, answers = Clock(), [True]
    pulse = ConsumerPulse(stall_seconds=2, liveness_seconds=4, now=clock)
    pulse.connected()

    def connect() -> None:
        if not answers[0]:
            raise TimeoutError

    check = BrokerCheck(connect, pulse.looks_stuck, now=clock)
    live = Liveness(pulse, check)
    clock.now += 5  # the loop stuck past liveness
    assert live()  # the broker has not answered during this stall yet
    check.check()
    assert not live()
    answers[0] = False  # the broker freezes: the worker's fault is still its own
    clock.now += 60
    check.check()
    assert not live()
    pulse.tick()
    assert live()
    clock.now += 5  # stuck again, the broker frozen all along: its fault
    check.check()
    assert live()
