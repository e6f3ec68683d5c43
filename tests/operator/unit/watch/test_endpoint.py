"""Following real endpoints (a separate process on loopback addresses): the stream, long-poll,
the fallbacks to long-poll and to polling, bounded reads, and watchers that leave nothing
behind when stopped."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from circuitgate.breaker_set import BreakerSet
from circuitgate.endpoint_step import serve_breakers
from circuitgate.settings import Settings
from circuitgate_devkit.cluster.fake_endpoints import FakeWorkers
from circuitgate_devkit.waiting import eventually_async
from circuitgate_operator.contract import Reading
from circuitgate_operator.model import WatchSpec
from circuitgate_operator.watch.endpoint import DEFAULT_MAX_BYTES, EndpointWatcher, fetch_reading
from circuitgate_operator.watch.pool import Target, WatcherPool, new_session
from circuitgate_operator.watch.sse import Event, EventParser


def test_long_poll_hears_a_trip_at_once(fake_workers: FakeWorkers) -> None:
    host = fake_workers.add()
    readings: list[tuple[float, Reading]] = []

    async def scenario() -> float:
        async with new_session() as session:
            watcher = EndpointWatcher(
                session=session,
                url=fake_workers.url(host),
                spec=WatchSpec(mode="longPoll", long_poll=30, poll_interval=10),
                on_reading=lambda r: readings.append((time.time(), r)),
            )
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) == 1)
            # The long-poll is now held open by the endpoint.
            await eventually_async(lambda: fake_workers.show(host)["open_requests"] == 1)
            opened = await asyncio.to_thread(fake_workers.trip, host, trips=1)
            await eventually_async(lambda: readings[-1][1].state == "open")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not watcher.polling
            return readings[-1][0] - opened

    latency = asyncio.run(scenario())
    assert latency < 1.0  # nowhere near the 10 s poll interval
    assert [r.state for _, r in readings] == ["closed", "open"]


def test_a_stream_hears_a_trip_at_once_and_costs_keep_alives_only(
    fake_workers: FakeWorkers,
) -> None:
    host = fake_workers.add()
    readings: list[tuple[float, Reading]] = []

    async def scenario() -> float:
        async with new_session() as session:
            watcher = EndpointWatcher(
                session=session,
                url=fake_workers.url(host),
                spec=WatchSpec(long_poll=1, poll_interval=10),
                on_reading=lambda r: readings.append((time.time(), r)),
            )
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) == 1)
            opened = await asyncio.to_thread(fake_workers.trip, host, trips=1)
            await eventually_async(lambda: readings[-1][1].state == "open")
            heard = readings[-1][0] - opened
            sent = fake_workers.show(host)["keepalives"]
            await eventually_async(
                lambda: fake_workers.show(host)["keepalives"] >= sent + 3,
                timeout=10,
                what="3 keep-alives",
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return heard

    assert asyncio.run(scenario()) < 1.0
    assert [r.state for _, r in readings] == ["closed", "open"]  # keep-alives are no readings
    assert fake_workers.show(host)["total_requests"] == 1  # one connection all along


def test_an_endpoint_without_a_stream_is_long_polled(fake_workers: FakeWorkers) -> None:
    """An older worker answers the stream 404 (or 400): the watcher long-polls it instead."""
    host = fake_workers.add()
    fake_workers.set(host, mode="no_stream")
    readings: list[tuple[float, Reading]] = []

    async def scenario() -> float:
        async with new_session() as session:
            watcher = EndpointWatcher(
                session=session,
                url=fake_workers.url(host),
                spec=WatchSpec(long_poll=30, poll_interval=10),
                on_reading=lambda r: readings.append((time.time(), r)),
            )
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) == 1)
            await eventually_async(lambda: fake_workers.show(host)["open_requests"] == 1)
            opened = await asyncio.to_thread(fake_workers.trip, host, trips=1)
            await eventually_async(lambda: readings[-1][1].state == "open")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not watcher.polling
            return readings[-1][0] - opened

    assert asyncio.run(scenario()) < 1.0
    assert [r.state for _, r in readings] == ["closed", "open"]  # the 404 is no reading
    # The stream asked once, then a plain GET, the long-poll the trip answered, the next one.
    assert fake_workers.show(host)["total_requests"] <= 4


@pytest.mark.parametrize(
    ("mode", "kind", "reason"),
    [
        ("malformed", "malformed", "malformed document: not JSON"),
        ("invalid", "malformed", "malformed document: breakers/0/state"),
        ("oversized", "oversized", f"oversized event: more than {DEFAULT_MAX_BYTES} bytes"),
        ("slow", "timeout", "no answer within 1s"),
        ("silent", "timeout", "no event or keep-alive within 2s"),
        ("trickle", "timeout", "no event or keep-alive within 2s"),
        ("no_event", "timeout", "no event within 1s"),
        ("http500", "http_status", "HTTP 500 instead of 200"),
        ("refused", "refused", "connection refused"),
    ],
)
def test_a_bad_stream_is_unknown_with_a_kind_and_a_reason(
    fake_workers: FakeWorkers, mode: str, kind: str, reason: str
) -> None:
    """A stream that completes no event or keep-alive for longPollSeconds + timeoutSeconds
    (a byte now and then does not count), or sends no first event within timeoutSeconds
    (keep-alives do not count), is as unknown as a long-poll that never answers."""
    host = fake_workers.add()
    fake_workers.trip(host, trips=1)  # whatever it says, it never reads as closed
    if mode == "refused":
        fake_workers.set(host, listening=False)
    else:
        fake_workers.set(host, mode=mode)
    readings: list[Reading] = []

    spec = WatchSpec(long_poll=1, timeout=1, poll_interval=10)
    took = asyncio.run(seconds_until_unknown(fake_workers, host, spec, readings, within=10))
    reading = next(r for r in readings if r.state == "unknown")
    assert all(r.state == "open" for r in readings[: readings.index(reading)])
    assert not reading.reachable and reading.error == kind
    assert reading.reason.startswith(reason)
    assert took < 4.0
    assert fake_workers.show(host)["total_requests"] <= 1


@pytest.mark.parametrize(
    ("mode", "reason", "within"),
    [("no_event", "no event within 5s", 5.0), ("trickle", "no event or keep-alive within 6s", 6.0)],
)
def test_bytes_that_never_stop_do_not_outlast_the_deadline(
    fake_workers: FakeWorkers, mode: str, reason: str, within: float
) -> None:
    """Keep-alives every 0.2 s and never an event, or a byte every 0.2 s and never an event's
    end: once the pace holds reads back, bytes are always waiting and no read ever waits out
    the deadline, so it is checked after every read too (found in review: a stream like that
    held its opening for ever, and its pod stayed unread)."""
    host = fake_workers.add()
    fake_workers.trip(host, trips=1)
    if mode == "no_event":
        fake_workers.set(host, mode=mode)
    readings: list[Reading] = []

    spec = WatchSpec(long_poll=1, timeout=5, poll_interval=30)
    then = mode if mode == "trickle" else None
    took = asyncio.run(seconds_until_unknown(fake_workers, host, spec, readings, 20, then))
    assert [r.state for r in readings][-1] == "unknown"
    assert readings[-1].error == "timeout" and readings[-1].reason.startswith(reason)
    assert took < within + 1.0


def test_a_stream_flooding_comments_is_read_at_a_bounded_pace(
    fake_workers: FakeWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No event in them, so no reading: the socket itself is read BURST times at once, then
    once per MIN_GAP, and what arrives meanwhile waits there (once 93 % of a core)."""
    host = fake_workers.add()
    readings: list[Reading] = []
    reads: list[float] = []
    feed = EventParser.feed

    def counted(parser: EventParser, chunk: bytes) -> list[Event]:
        reads.append(time.monotonic())
        return feed(parser, chunk)

    monkeypatch.setattr(EventParser, "feed", counted)

    async def scenario() -> None:
        watcher, task = await follow(fake_workers, host, WatchSpec(poll_interval=1), readings)
        await eventually_async(lambda: len(readings) == 1)
        await asyncio.to_thread(fake_workers.set, host, mode="flood")
        await eventually_async(lambda: len(reads) >= 20, timeout=20, what="20 reads")
        assert not task.done()
        await stop(watcher, task)

    asyncio.run(scenario())
    rate = (len(reads) - EndpointWatcher.BURST - 1) / (reads[-1] - reads[0])
    assert rate <= 1 / EndpointWatcher.MIN_GAP + 0.5, f"{rate:.0f} reads a second"
    assert [r.state for r in readings] == ["closed"]


def test_a_stream_sending_without_end_is_read_at_a_bounded_pace(
    fake_workers: FakeWorkers,
) -> None:
    """A new sequence in every event, back to back: BURST readings, then one per MIN_GAP."""
    host = fake_workers.add()
    fake_workers.set(host, mode="instant_change")
    readings: list[Reading] = []

    async def scenario() -> float:
        watcher, task = await follow(fake_workers, host, WatchSpec(poll_interval=1), readings)
        await eventually_async(lambda: len(readings) >= EndpointWatcher.BURST + 1)
        began, first = time.monotonic(), len(readings)
        await eventually_async(lambda: len(readings) >= first + 8, timeout=10, what="8 more")
        rate = (len(readings) - first) / (time.monotonic() - began)
        await stop(watcher, task)
        return rate

    rate = asyncio.run(scenario())
    assert rate <= 1 / EndpointWatcher.MIN_GAP + 0.5, f"{rate:.0f} readings a second"
    assert all(r.state == "closed" for r in readings)
    assert fake_workers.show(host)["total_requests"] == 1


def test_an_endpoint_without_long_poll_is_polled_at_the_interval(fake_workers: FakeWorkers) -> None:
    host = fake_workers.add()
    fake_workers.set(host, mode="no_long_poll")
    readings: list[Reading] = []

    async def scenario() -> EndpointWatcher:
        async with new_session() as session:
            watcher = EndpointWatcher(
                session=session,
                url=fake_workers.url(host),
                spec=WatchSpec(mode="longPoll", long_poll=30, poll_interval=1),
                on_reading=readings.append,
            )
            began = time.monotonic()
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) >= 4, timeout=10, what="4 readings")
            elapsed.append(time.monotonic() - began)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return watcher

    elapsed: list[float] = []
    watcher = asyncio.run(scenario())
    assert watcher.polling
    # Not a hot loop: one plain GET, one long-poll answered at once, then one per second, so
    # the fourth reading comes two poll intervals in at the earliest.
    assert elapsed[0] >= 1.8, f"4 readings in {elapsed[0]:.2f} s"
    assert fake_workers.show(host)["total_requests"] == len(readings)
    assert all(r.state == "closed" for r in readings)


@pytest.mark.parametrize(
    ("mode", "kind", "reason"),
    [
        ("malformed", "malformed", "malformed document: not JSON"),
        ("invalid", "malformed", "malformed document: breakers/0/state"),
        ("oversized", "oversized", "oversized answer: more than 65536 bytes"),
        ("slow", "timeout", "no complete answer within 1s"),
        ("http500", "http_status", "HTTP 500 instead of 200"),
        ("refused", "refused", "connection refused"),
    ],
)
def test_a_bad_answer_is_unknown_with_a_kind_and_a_reason(
    fake_workers: FakeWorkers, mode: str, kind: str, reason: str
) -> None:
    host = fake_workers.add()
    fake_workers.trip(host, trips=1)  # whatever it says, it never reads as closed
    if mode == "refused":
        fake_workers.set(host, listening=False)
    else:
        fake_workers.set(host, mode=mode)

    async def read() -> tuple[Reading, float]:
        async with new_session() as session:
            started = time.monotonic()
            reading = await fetch_reading(
                session, fake_workers.url(host), timeout=1.0, max_bytes=65536
            )
            return reading, time.monotonic() - started

    reading, took = asyncio.run(read())
    assert reading.state == "unknown" and not reading.reachable
    assert reading.error == kind
    assert reading.reason.startswith(reason)
    assert took < 2.0


def test_a_failed_endpoint_is_retried_after_the_interval_and_recovers(
    fake_workers: FakeWorkers,
) -> None:
    host = fake_workers.add()
    fake_workers.set(host, mode="http500")
    readings: list[Reading] = []

    async def scenario() -> None:
        async with new_session() as session:
            watcher = EndpointWatcher(
                session=session,
                url=fake_workers.url(host),
                spec=WatchSpec(poll_interval=1, timeout=1),
                on_reading=readings.append,
            )
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) == 1)
            await asyncio.to_thread(fake_workers.set, host, mode="normal")
            await eventually_async(lambda: readings[-1].state == "closed", timeout=3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert readings[0].state == "unknown"
    assert fake_workers.show(host)["total_requests"] <= 4


def test_streams_open_a_few_at_a_time_each_timed_from_its_own_turn(
    fake_workers: FakeWorkers,
) -> None:
    """A server that opens one stream at a time (a loaded node; ten thousand endpoints read
    at once) answers the last of eight after 2 s: with openings limited, each stream's 1 s for
    its first event counts from its own turn, so every first reading is the document and
    no endpoint is read twice."""
    hosts = [fake_workers.add() for _ in range(8)]
    fake_workers.bulk(hosts, mode="queued")
    heard: dict[str, list[Reading]] = {h: [] for h in hosts}

    async def scenario() -> None:
        async with new_session() as session:
            openings = asyncio.Semaphore(2)
            pool = WatcherPool(session, lambda h, r: heard[h].append(r), openings=openings)
            spec = WatchSpec(long_poll=30, timeout=1.0, poll_interval=10)
            await pool.sync({h: Target(fake_workers.url(h), spec) for h in hosts})
            await eventually_async(lambda: all(heard.values()), timeout=30)
            await pool.close()

    asyncio.run(scenario())
    assert {h: [r.state for r in readings] for h, readings in heard.items()} == {
        h: ["closed"] for h in hosts
    }


def test_only_a_first_read_waits_for_a_turn(fake_workers: FakeWorkers) -> None:
    """A worker that restarted (its stream cut, then refused, then served again) is read again
    at once even while every turn to open is taken, by endpoints that never answer, say: they
    would keep it unread for as long as they hold the turns (found in review)."""
    host = fake_workers.add()
    readings: list[Reading] = []

    async def scenario() -> None:
        openings = asyncio.Semaphore(1)
        async with new_session() as session:
            watcher = EndpointWatcher(
                session=session,
                url=fake_workers.url(host),
                spec=WatchSpec(long_poll=30, timeout=1, poll_interval=0.5),
                on_reading=readings.append,
                openings=openings,
            )
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) == 1)
            await openings.acquire()  # every turn taken from now on
            await asyncio.to_thread(fake_workers.set, host, listening=False)
            await eventually_async(lambda: readings[-1].state == "unknown")
            await asyncio.to_thread(fake_workers.set, host, listening=True)
            await eventually_async(lambda: readings[-1].state == "closed", timeout=10)
            await stop(watcher, task)

    asyncio.run(scenario())
    assert [r.state for r in readings][:2] == ["closed", "unknown"]


def test_streams_broken_at_once_open_again_spread_over_half_an_interval(
    fake_workers: FakeWorkers,
) -> None:
    """Twenty streams cut at the same moment (the operator's network blipped) open again 1 to
    1.5 poll intervals later, jittered, not all at once: they take no turn, and ten thousand
    at once would time out on each other (found in review)."""
    hosts = [fake_workers.add() for _ in range(20)]
    back: dict[str, float] = {}
    heard: dict[str, list[Reading]] = {h: [] for h in hosts}

    def on_reading(host: str, reading: Reading) -> None:
        heard[host].append(reading)
        if reading.state == "closed" and len(heard[host]) > 1:
            back.setdefault(host, time.monotonic())

    async def scenario() -> float:
        async with new_session() as session:
            pool = WatcherPool(session, on_reading, openings=asyncio.Semaphore(64))
            spec = WatchSpec(long_poll=30, timeout=1, poll_interval=2)
            await pool.sync({h: Target(fake_workers.url(h), spec) for h in hosts})
            await eventually_async(lambda: all(heard.values()))
            await asyncio.to_thread(fake_workers.bulk, hosts, mode="http500")  # all cut
            await eventually_async(lambda: all(r[-1].state == "unknown" for r in heard.values()))
            cut = time.monotonic()
            await asyncio.to_thread(fake_workers.bulk, hosts, mode="normal")
            await eventually_async(lambda: len(back) == len(hosts), timeout=10)
            await pool.close()
            return cut

    cut = asyncio.run(scenario())
    after = sorted(t - cut for t in back.values())
    assert after[0] >= 2.0 - 0.2 and after[-1] <= 3.0 + 0.5
    assert after[-1] - after[0] >= 0.2  # spread, not at one moment


def test_stopped_watchers_leave_no_task_and_no_connection(fake_workers: FakeWorkers) -> None:
    hosts = [fake_workers.add() for _ in range(20)]

    async def scenario() -> None:
        baseline = len(asyncio.all_tasks())
        session = new_session()
        heard: dict[str, Reading] = {}
        pool = WatcherPool(session, heard.__setitem__)
        spec = WatchSpec(long_poll=30)
        await pool.sync({h: Target(fake_workers.url(h), spec) for h in hosts})
        await eventually_async(lambda: len(heard) == 20)

        async def all_held() -> bool:
            shown = await asyncio.gather(*(asyncio.to_thread(fake_workers.show, h) for h in hosts))
            return all(s["open_requests"] == 1 for s in shown)

        await eventually_async(all_held)
        assert len(asyncio.all_tasks()) == baseline + 20
        # Half the pods go away: their watchers stop at once, the others carry on.
        await pool.sync({h: Target(fake_workers.url(h), spec) for h in hosts[10:]})
        assert pool.keys == frozenset(hosts[10:])
        assert len(asyncio.all_tasks()) == baseline + 10

        async def released(subset: list[str]) -> bool:
            shown = await asyncio.gather(*(asyncio.to_thread(fake_workers.show, h) for h in subset))
            return all(s["open_requests"] == 0 for s in shown)

        await eventually_async(lambda: released(hosts[:10]))
        await pool.close()
        assert len(asyncio.all_tasks()) == baseline
        await eventually_async(lambda: released(hosts))
        connector = session.connector
        assert connector is not None
        assert not connector._acquired  # type: ignore[attr-defined]
        await session.close()

    asyncio.run(scenario())


async def follow(
    fake_workers: FakeWorkers, host: str, spec: WatchSpec, readings: list[Reading]
) -> tuple[EndpointWatcher, asyncio.Task[None]]:
    """A watcher of host, running; the caller cancels it."""
    watcher = EndpointWatcher(
        session=new_session(), url=fake_workers.url(host), spec=spec, on_reading=readings.append
    )
    return watcher, asyncio.create_task(watcher.run())


async def seconds_until_unknown(
    fake_workers: FakeWorkers,
    host: str,
    spec: WatchSpec,
    readings: list[Reading],
    within: float,
    then: str | None = None,
) -> float:
    """Follow host (switched to mode ``then`` after its first reading) until a reading is
    unknown; the seconds that took, from the start or from the switch."""
    watcher, task = await follow(fake_workers, host, spec, readings)
    if then is not None:
        await eventually_async(lambda: len(readings) == 1)
        await asyncio.to_thread(fake_workers.set, host, mode=then)
    started = time.monotonic()
    await eventually_async(lambda: any(r.state == "unknown" for r in readings), timeout=within)
    took = time.monotonic() - started
    await stop(watcher, task)
    return took


async def stop(watcher: EndpointWatcher, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await watcher.session.close()


@pytest.mark.parametrize("mode", ["nested", "year_one"])
def test_a_hostile_answer_after_a_trip_reads_unknown_and_the_watcher_carries_on(
    fake_workers: FakeWorkers, mode: str
) -> None:
    """Nested JSON (RecursionError) and a year-1 time (OverflowError) once crashed the watcher,
    leaving "open, reachable" as the pod's last word."""
    host = fake_workers.add()
    fake_workers.trip(host, trips=1)
    readings: list[Reading] = []

    async def scenario() -> None:
        watcher, task = await follow(
            fake_workers, host, WatchSpec(long_poll=30, poll_interval=0.5), readings
        )
        await eventually_async(lambda: readings and readings[-1].state == "open")
        await asyncio.to_thread(fake_workers.set, host, mode=mode)
        await eventually_async(lambda: readings[-1].state == "unknown", what="unknown")
        assert not readings[-1].reachable and readings[-1].reason.startswith("malformed")
        await asyncio.to_thread(fake_workers.set, host, mode="normal")
        await eventually_async(lambda: readings[-1].state == "open", what="open again")
        assert not task.done()
        await stop(watcher, task)

    asyncio.run(scenario())


def test_an_endpoint_answering_every_long_poll_at_once_is_asked_a_bounded_number_of_times(
    fake_workers: FakeWorkers,
) -> None:
    """A new sequence on every answer, at once: once ~990 requests a second."""
    host = fake_workers.add()
    fake_workers.set(host, mode="instant_change")
    readings: list[Reading] = []

    async def scenario() -> float:
        watcher, task = await follow(
            fake_workers, host, WatchSpec(mode="longPoll", long_poll=30, poll_interval=1), readings
        )
        await eventually_async(lambda: len(readings) >= 2)
        began, first = time.monotonic(), len(readings)
        await eventually_async(lambda: len(readings) >= first + 8, timeout=10, what="8 more")
        rate = (len(readings) - first) / (time.monotonic() - began)
        await stop(watcher, task)
        return rate

    rate = asyncio.run(scenario())
    assert rate <= 1 / EndpointWatcher.MIN_GAP + 0.5, f"{rate:.0f} requests a second"
    assert all(r.state == "closed" for r in readings)


def test_an_endpoint_holding_long_polls_for_less_than_asked_is_still_long_polled(
    fake_workers: FakeWorkers,
) -> None:
    """longPollSeconds above twice the worker's max_wait once downgraded to polling for good:
    a trip was then heard only at the next poll. The endpoint's own cap is long-polled."""
    host = fake_workers.add()
    fake_workers.set(host, max_wait=1.2)
    readings: list[Reading] = []

    async def scenario() -> float:
        watcher, task = await follow(
            fake_workers, host, WatchSpec(mode="longPoll", long_poll=30, poll_interval=20), readings
        )
        # The plain GET, then held long-polls each cut short at 1.2 s by the endpoint.
        await eventually_async(lambda: len(readings) >= 3, timeout=10, what="3 readings")
        assert not watcher.polling
        await eventually_async(lambda: fake_workers.show(host)["open_requests"] == 1)
        opened = await asyncio.to_thread(fake_workers.trip, host, trips=1)
        await eventually_async(lambda: readings[-1].state == "open", timeout=5, what="open")
        heard = time.time() - opened
        await stop(watcher, task)
        return heard

    assert asyncio.run(scenario()) < 2.0  # not the 20 s poll interval


def test_a_watcher_that_dies_leaves_the_pod_unknown(fake_workers: FakeWorkers) -> None:
    """The pool's last word on a watcher that ended on an exception is unknown, never the
    "open, reachable" it read just before; it says so (``ended``), so the policy loop, which
    syncs the pool only on a change, starts it again. Watchers it stops itself do not."""
    host = fake_workers.add()
    fake_workers.trip(host, trips=1)
    heard: list[Reading] = []
    failing = [True]

    def on_reading(_: str, reading: Reading) -> None:
        heard.append(reading)
        if reading.state == "open" and failing[0]:
            raise RuntimeError("the consumer failed")

    async def scenario() -> None:
        targets = {host: Target(fake_workers.url(host), WatchSpec())}
        async with new_session() as session:
            pool = WatcherPool(session, on_reading)
            await pool.sync(targets)
            await eventually_async(lambda: len(heard) == 2, what="a reading after the open one")
            assert pool.ended
            failing[0] = False
            await pool.sync(targets)
            assert not pool.ended
            await eventually_async(lambda: len(heard) == 3, what="the new watcher's reading")
            await pool.close()
            assert not pool.ended

    asyncio.run(scenario())
    assert [r.state for r in heard] == ["open", "unknown", "open"]
    assert heard[1].reason == "watcher failed: RuntimeError"


def test_the_worker_endpoint_itself_is_followed_on_one_stream() -> None:
    """The worker's own endpoint (circuitgate.endpoint), not the stand-in: the operator's
    query is one the worker serves, a trip arrives as an event, and no second request is made."""
    breakers = BreakerSet(Settings(fail_max=1, reset_timeout=30))
    server = serve_breakers(breakers, "w@lab", ["celery"], host="127.0.0.1", port=0, max_wait=5)
    server.start()
    host, port = server.address
    readings: list[Reading] = []
    requests: list[str] = []

    async def count(_: object, __: object, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(params.url.path)

    async def scenario() -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(count)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            watcher = EndpointWatcher(
                session=session,
                url=f"http://{host}:{port}/circuit",
                spec=WatchSpec(long_poll=1, poll_interval=10),
                on_reading=readings.append,
            )
            task = asyncio.create_task(watcher.run())
            await eventually_async(lambda: len(readings) == 1)
            await asyncio.to_thread(breakers.default.record_failure, "t", RuntimeError())
            await eventually_async(lambda: readings[-1].state == "open", timeout=3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    assert [r.state for r in readings] == ["closed", "open"]
    assert requests == ["/circuit/stream"]
