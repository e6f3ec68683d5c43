"""The broker check's verdict: an answer counts for a few intervals, a failure or a
connection that hangs never does, and nothing is asked while the loop ticks."""

from __future__ import annotations

import threading

from circuitgate.broker_check import BrokerCheck


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_counts_for_three_intervals_and_only_asked_while_wanted() -> None:
    clock, calls, wanted = Clock(), [], [False]
    check = BrokerCheck(lambda: calls.append(clock.now), lambda: wanted[0], now=clock)
    check.check()
    assert calls == [] and not check.answered_lately()  # the loop ticks: nothing asked
    wanted[0] = True
    check.check()
    assert calls == [100.0] and check.answered_lately()
    clock.now += 3 * check.interval
    assert check.answered_lately()
    clock.now += 0.1
    assert not check.answered_lately()


def test_a_refused_connection_is_no_answer() -> None:
    def refused() -> None:
        raise ConnectionRefusedError(111, "refused")

    check = BrokerCheck(refused, lambda: True, now=Clock())
    check.check()
    assert not check.answered_lately()


def test_a_connection_that_hangs_holds_only_the_checks_thread() -> None:
    entered, release = threading.Event(), threading.Event()

    def hangs() -> None:
        entered.set()
        release.wait(30)

    check = BrokerCheck(hangs, lambda: True, interval=0.01)
    check.start()
    assert entered.wait(10)
    assert not check.answered_lately()  # asked and waiting: no answer yet
    release.set()
    check.stop()
