"""What circuitgate costs a healthy worker: CPU per no-op task with it installed and without.

One real Redis broker and, in each round, two ``celery worker`` processes (prefork, the same
settings) side by side: one with circuitgate (``circuitgate`` mode), one without (``none``),
each draining a queue of its own. They run at the same time so that what the machine does
meanwhile (other tenants, a host stealing CPU from this VM, frequency changes) hits both
alike; run one after the other on this machine, the same worker's CPU per task swings by
10-20% between runs. Each worker has a core of its own. Which worker starts first and which
core it gets still shift the figures by several percent, so a round is two such runs with
the order swapped, and its ratio the geometric mean of the two. Each run is measured over
the same stretch of time for both: from when both have done 5% of their tasks (start-up
and warm-up stay out) to the last moment both are still busy.

The figure of merit is the CPU-per-task ratio (without / with: 1.0 is free, 0.99 is 1%
more CPU per task with circuitgate), from the scheduler's nanosecond accounting of every
thread of each worker and its pool; the median over rounds, with the spread. Throughput
comes along (with / without), noisier. Then circuitgate's own work per task timed
in-process: a floor for the overhead. Prints every round and, as the last line, one JSON
object.

    python bench/gate_overhead.py [--tasks N] [--rounds N] [--hot-path-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
import timeit
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from circuitgate import Settings, SharedCircuitBreaker
from circuitgate.broker_deliveries import stamp
from circuitgate_devkit.lab.brokers import Broker, redis_broker
from circuitgate_devkit.lab.scenario import publish, running
from circuitgate_devkit.lab.workers import ExecutionLog, LabWorker

CONCURRENCY = 2
MODES = ("circuitgate", "none")
POLLS_PER_TASK = 5.0
"""The consumer's gate checks per no-op task as measured here on Redis (``--hot-path-only``)."""


def _threads(pid: int) -> Iterator[Path]:
    """The ``/proc`` directory of every thread of process ``pid`` and of its children (the
    prefork pool); processes gone in the meantime are skipped."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = stat.read_text().rsplit(")", 1)[1].split()[1]
            if stat.parent.name == str(pid) or parent == str(pid):
                yield from list((stat.parent / "task").iterdir())
        except (OSError, IndexError):
            continue


def _cpu_seconds(pid: int) -> float:
    """CPU time used so far by process ``pid`` and its pool, every thread of each, from the
    scheduler's own nanosecond accounting (``schedstat``), not the tick-sampled ``stat``
    fields (at 100 Hz those alone are off by a few percent in seconds)."""
    total = 0
    for thread in _threads(pid):
        with contextlib.suppress(OSError, ValueError):  # gone in the meantime
            total += int((thread / "schedstat").read_text().split()[0])
    return total / 1e9


def _pin(worker: LabWorker, core: int) -> None:
    """Keep ``worker`` (its main process and pool) on one core of its own."""
    assert worker.process is not None
    for thread in _threads(worker.process.pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(thread.name), {core})


@dataclass(frozen=True)
class Sample:
    at: float
    done: int
    cpu_s: float


@dataclass(frozen=True)
class Arm:
    """One worker's figures over the stretch both workers were busy."""

    tasks_per_s: float
    cpu_us_per_task: float
    polls_per_task: float = 0.0
    """The consumer's gate checks per task (circuitgate's worker; read at the end)."""


def _sample(worker: LabWorker, log: ExecutionLog) -> Sample:
    assert worker.process is not None
    # Counting lines is cheap, so polling takes little CPU from the workers measured.
    done = log.path.read_bytes().count(b"\n") if log.path.exists() else 0
    return Sample(time.monotonic(), done, _cpu_seconds(worker.process.pid))


def side_by_side(
    broker: Broker, workdir: Path, tasks: int, order: tuple[str, ...]
) -> dict[str, Arm]:
    """Both modes drain ``tasks`` queued no-op tasks each at the same time; each mode's
    figures over the stretch when both had done 5% and neither had finished."""
    workers, logs = {}, {}
    for mode in order:
        home = workdir / mode
        home.mkdir(parents=True)
        queue = f"overhead-{workdir.name}-{mode}"
        publish(broker, tasks, queue=queue, work_s=0.0, fail_s=0.0)
        # No per-task events: the lab's own records would add to both modes' cost per task.
        workers[mode] = LabWorker(
            mode, broker, home, mode=mode, concurrency=CONCURRENCY, queues=queue,
            record_tasks=False,
        )  # fmt: skip
        logs[mode] = ExecutionLog(home / "executions.jsonl")
    skip = max(tasks // 20, 1)
    first: dict[str, Sample] = {}
    last: dict[str, Sample] = {}
    with running([workers[mode] for mode in order]):
        for core, mode in enumerate(order):
            _pin(workers[mode], core)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = {mode: _sample(workers[mode], logs[mode]) for mode in order}
            if any(sample.done >= tasks for sample in now.values()):
                break  # one ran dry: the stretch ends at the sample before
            if all(sample.done >= skip for sample in now.values()):
                first = first or now
                last = now
        gated = workers["circuitgate"]
        polls_per_task = gated.polls() / max(_sample(gated, logs["circuitgate"]).done, 1)
    if not first or last is first:
        raise RuntimeError(f"the workers were never both busy for two samples: {workers}")
    return {
        mode: Arm(
            tasks_per_s=(last[mode].done - first[mode].done) / (last[mode].at - first[mode].at),
            cpu_us_per_task=1e6
            * (last[mode].cpu_s - first[mode].cpu_s)
            / (last[mode].done - first[mode].done),
            polls_per_task=polls_per_task if mode == "circuitgate" else 0.0,
        )
        for mode in order
    }


def own_work_us(polls_per_task: float, repeat: int = 20_000) -> dict[str, float]:
    """circuitgate's own work per task with the circuit closed, in-process, by part: each
    part's cost times its calls per task (the consumer's polls as counted in the real runs).

    In the main process: every poll's `fetch_allowed`, the gate strategy's check and the
    broker facts put into the request; in the pool child: admit, trial_running and
    record_success. Unlike the side-by-side runs this hardly depends on the machine's other
    load; in a real worker, whose caches are cold between tasks, each part costs more.
    """
    breaker = SharedCircuitBreaker(Settings())
    for n in range(breaker.settings.window_size):  # a healthy worker's full, clean window
        breaker.record_success(f"warm-{n}")
    message = types.SimpleNamespace(delivery_info={}, headers={}, delivery_tag="tag")

    def trial_running() -> None:
        with breaker.trial_running("task"):
            pass

    parts: dict[str, tuple[Callable[[], object], float]] = {
        "fetch_allowed (per poll)": (breaker.fetch_allowed, polls_per_task),
        "gate strategy": (breaker.flowing, 1),
        "broker facts": (lambda: stamp({}, message), 1),
        "admit": (lambda: breaker.admit("task"), 1),
        "trial_running": (trial_running, 1),
        "record_success": (lambda: breaker.record_success("task"), 1),
    }
    costs = {
        name: calls * 1e6 * min(timeit.repeat(part, number=repeat, repeat=5)) / repeat
        for name, (part, calls) in parts.items()
    }
    breaker.shared.close()
    return costs


def _cpu_ratio(arms: dict[str, Arm]) -> float:
    """Without / with: above 1.0 circuitgate's worker used less CPU per task."""
    return arms["none"].cpu_us_per_task / arms["circuitgate"].cpu_us_per_task


def _rate_ratio(arms: dict[str, Arm]) -> float:
    """With / without: tasks per second, noisier than CPU per task."""
    return arms["circuitgate"].tasks_per_s / arms["none"].tasks_per_s


def _paired(pair: list[dict[str, Arm]], ratio: Callable[[dict[str, Arm]], float]) -> float:
    """A round's ratio: the geometric mean over its two runs, so the order's bias cancels."""
    return math.sqrt(ratio(pair[0]) * ratio(pair[1]))


def _us(arms: dict[str, Arm]) -> str:
    return f"{arms['circuitgate'].cpu_us_per_task:.0f}/{arms['none'].cpu_us_per_task:.0f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8000, help="no-op tasks per worker and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (two runs each)")
    parser.add_argument(
        "--hot-path-only", action="store_true", help="only the in-process figure (seconds)"
    )
    args = parser.parse_args()
    if args.hot_path_only:
        own = own_work_us(POLLS_PER_TASK)
        print(json.dumps({"hot_path_us_per_task": sum(own.values()), "hot_path_us": own}))
        return
    print(
        f"{args.tasks} no-op tasks per worker and round, 2 workers side by side"
        f" x {CONCURRENCY} processes, Redis broker"
    )
    runs: list[dict[str, Arm]] = []
    cpu_ratios: list[float] = []
    rate_ratios: list[float] = []
    with redis_broker() as broker, tempfile.TemporaryDirectory(prefix="circuitgate-gate-") as tmp:
        for n in range(args.rounds):
            pair = [
                side_by_side(broker, Path(tmp) / f"{n}-{i}", args.tasks, order)
                for i, order in enumerate((MODES, MODES[::-1]))
            ]
            runs.extend(pair)
            cpu_ratios.append(_paired(pair, _cpu_ratio))
            rate_ratios.append(_paired(pair, _rate_ratio))
            print(
                f"round {n + 1}: CPU per task with/without"
                f" {' and '.join(_us(arms) for arms in pair)};"
                f" ratio {cpu_ratios[-1]:.4f}, throughput ratio {rate_ratios[-1]:.3f}",
                flush=True,
            )
    cpu_ratio = statistics.median(cpu_ratios)
    with_cpu, without_cpu = (
        statistics.median(r[mode].cpu_us_per_task for r in runs) for mode in MODES
    )
    print(
        f"CPU-per-task ratio {cpu_ratio:.4f} (median of {len(cpu_ratios)} rounds;"
        f" {min(cpu_ratios):.4f}..{max(cpu_ratios):.4f}; target >= 0.99:"
        f" {'met' if cpu_ratio >= 0.99 else 'MISSED'})"
    )
    print(
        f"worker CPU per task: with {with_cpu:.1f} us, without {without_cpu:.1f} us;"
        f" throughput ratio {statistics.median(rate_ratios):.3f}"
    )
    polls = statistics.median(r["circuitgate"].polls_per_task for r in runs)
    own = own_work_us(polls)
    hot_path = sum(own.values())
    print(
        f"circuitgate's own work per task (in-process): {hot_path:.2f} us,"
        f" {100 * hot_path / without_cpu:.2f}% of a worker's CPU per task:"
        f" {', '.join(f'{name} {us:.2f}' for name, us in own.items())}"
        f" ({polls:.1f} polls per task)"
    )
    print(
        json.dumps(
            {
                "cpu_ratio": cpu_ratio,
                "cpu_ratio_min": min(cpu_ratios),
                "cpu_ratio_max": max(cpu_ratios),
                "cpu_ratio_stdev": statistics.stdev(cpu_ratios) if len(cpu_ratios) > 1 else 0.0,
                "cpu_ratios": cpu_ratios,
                "with_cpu_us_per_task": with_cpu,
                "without_cpu_us_per_task": without_cpu,
                "ratio": statistics.median(rate_ratios),
                "rate_ratios": rate_ratios,
                "hot_path_us_per_task": hot_path,
                "hot_path_us": own,
                "polls_per_task": polls,
                "tasks_per_run": args.tasks,
                "rounds": len(cpu_ratios),
            }
        )
    )


if __name__ == "__main__":
    main()
