"""How soon a watcher of the worker endpoint learns of a trip: long-poll vs plain polling.

The setting of a real worker: the breaker trips in a forked process (as in a pool child),
the endpoint runs in the parent (the worker's main process). For each of N trips, one
watcher long-polls ``/circuit?since=SEQ&wait=30`` and another polls ``/circuit`` every
``--poll-interval`` seconds; each notes when it first sees the circuit open. Latency is
from just before the failure is recorded to that moment.

    python bench/endpoint_latency.py --trips 100 --poll-interval 1.0

Prints a line per 20 trips and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import statistics
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from circuitgate.breaker import SharedCircuitBreaker
from circuitgate.breaker_set import BreakerSet
from circuitgate.endpoint_step import serve_breakers
from circuitgate.settings import Settings


def fetch(address: tuple[str, int], path: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        connection.request("GET", path)
        data: dict[str, Any] = json.loads(connection.getresponse().read())
        return data
    finally:
        connection.close()


def is_open(document: dict[str, Any]) -> bool:
    return bool(document["breakers"][0]["state"] == "open")


def tripper(breaker: SharedCircuitBreaker, orders: Connection) -> None:
    """The pool child's part: on each order, note the time and record the tripping failure."""
    while orders.recv():
        started = time.time()
        breaker.record_failure("bench", RuntimeError("device lost"))
        orders.send(started)


def long_poller(address: tuple[str, int], seen: list[float], stop: threading.Event) -> None:
    since = fetch(address, "/circuit")["sequence"]
    while not stop.is_set():
        document = fetch(address, f"/circuit?since={since}&wait=30")
        if document["sequence"] != since and is_open(document):
            seen.append(time.time())
        since = document["sequence"]


def plain_poller(
    address: tuple[str, int], interval: float, seen: list[float], stop: threading.Event
) -> None:
    was_open = False
    while not stop.wait(interval):
        now_open = is_open(fetch(address, "/circuit"))
        if now_open and not was_open:
            seen.append(time.time())
        was_open = now_open


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()

    breakers = BreakerSet(Settings(fail_max=1, reset_timeout=3600, jitter=0.0))
    breaker = breakers.default
    endpoint = serve_breakers(breakers, "bench@lab", ["celery"], host="127.0.0.1", port=0)
    endpoint.start()
    orders, child_end = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(target=tripper, args=(breaker, child_end))
    child.start()
    stop = threading.Event()
    long_seen: list[float] = []
    plain_seen: list[float] = []
    watchers = [
        threading.Thread(target=long_poller, args=(endpoint.address, long_seen, stop)),
        threading.Thread(
            target=plain_poller, args=(endpoint.address, args.poll_interval, plain_seen, stop)
        ),
    ]
    for watcher in watchers:
        watcher.daemon = True
        watcher.start()
    time.sleep(0.5)

    long_ms: list[float] = []
    plain_ms: list[float] = []
    for trip in range(1, args.trips + 1):
        orders.send(True)
        started = orders.recv()
        deadline = time.monotonic() + args.poll_interval * 3 + 5
        while (len(long_seen) < trip or len(plain_seen) < trip) and time.monotonic() < deadline:
            time.sleep(0.002)
        if len(long_seen) < trip or len(plain_seen) < trip:
            raise SystemExit(f"trip {trip}: a watcher never saw the circuit open")
        long_ms.append((long_seen[-1] - started) * 1000)
        plain_ms.append((plain_seen[-1] - started) * 1000)
        breaker.close()
        time.sleep(args.poll_interval * 1.5 + random.uniform(0, args.poll_interval))
        if trip % 20 == 0:
            print(
                f"{trip} trips: long-poll p50 {statistics.median(long_ms):.1f} ms, "
                f"plain poll p50 {statistics.median(plain_ms):.1f} ms",
                flush=True,
            )

    orders.send(False)
    child.join(5)
    stop.set()
    breaker.open()  # wakes the long-poller so it can see the stop flag
    endpoint.stop()
    result = {
        "trips": args.trips,
        "long_poll_p50_ms": round(statistics.median(long_ms), 2),
        "long_poll_p99_ms": round(percentile(long_ms, 0.99), 2),
        "plain_poll_interval_s": args.poll_interval,
        "plain_poll_p50_ms": round(statistics.median(plain_ms), 2),
        "plain_poll_p99_ms": round(percentile(plain_ms, 0.99), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
