"""Failure amplification, measured: real workers on one queue, one broken, one arm per mode.

``make demo`` and ``bench/amplification.py`` both run this scenario, so the figures they
print come from the same code. One arm starts the workers of one lab mode (``none``,
``seed_snippet`` or ``circuitgate``), publishes the tasks, waits for every task's final
outcome and reads back what happened from the structured records: the execution log and
each worker's event log (`circuitgate_devkit.lab.recorder`).

What the figures mean:

- a task's *final outcome* is the state of its last execution as Celery reports it
  (``task_postrun``): success, or failure; an execution handed back to the queue
  (circuitgate, after a counted failure: ``IGNORED``) or refused by an open circuit
  (``REJECTED``) is not final, the task runs again elsewhere;
- ``failed_share``: tasks whose final outcome is failure with no success, over tasks
  published;
- ``tasks_lost``: published tasks with no final outcome when the arm ends;
- ``broken_worker_share``: the broken worker's executions over all executions, that is
  the share of the pool's work that the broken worker took (without hand-back each task
  runs once, so it is also the share of tasks it took);
- ``trips``: the broken worker's circuits opening (the published snippet has one circuit
  per pool process, so each process's trips count);
- ``max_broken_tasks_per_open_period``: the broken worker's executions between two trips
  (executions grouped by start time; the first group ends at the first trip), at most;
- ``makespan_s``: from the first publish to the last task's final outcome.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from circuitgate_devkit.waiting import TimedOut, eventually

from .app import app, infer
from .brokers import Broker, sqs_broker
from .records import Event
from .workers import Execution, ExecutionLog, LabWorker

__all__ = (
    "ARMS",
    "ARM_TITLES",
    "CONCURRENCIES",
    "ArmResult",
    "ArmStats",
    "Comparison",
    "Scenario",
    "Transition",
    "format_table",
    "publish",
    "run_arm",
    "run_comparison",
    "running",
    "summary",
)

ARMS: Mapping[str, str] = {
    "no_breaker": "none",
    "seed_snippet": "seed_snippet",
    "circuitgate": "circuitgate",
}
"""Arm name, as reported, to the lab app's mode."""
ARM_TITLES: Mapping[str, str] = {
    "no_breaker": "no breaker",
    "seed_snippet": "published snippet",
    "circuitgate": "circuitgate",
}

CONCURRENCIES = (1, 2)
"""Prefork processes per worker the comparison runs at: one process, and a pool of them."""

_FINAL_STATES = {"SUCCESS": "success", "FAILURE": "failure"}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The knobs of one comparison; every arm runs with the same."""

    workers: int = 5
    """Workers in the pool; the first one is broken for the whole run."""
    concurrency: int = 2
    """Prefork processes per worker."""
    tasks: int = 200
    work_s: float = 2.0
    """How long a task takes on a healthy worker."""
    fail_s: float = 0.02
    """How long the broken worker takes to fail it."""
    fail_max: int = 3
    reset_timeout: float = 5.0
    jitter: float = 0.1

    @property
    def worker_names(self) -> list[str]:
        return [f"gpu{i}" for i in range(1, self.workers + 1)]

    @property
    def broken(self) -> str:
        return self.worker_names[0]

    @property
    def conf(self) -> dict[str, Any]:
        """Breaker settings; the published snippet makes its per-process pybreakers from them."""
        return {
            "circuitgate_fail_max": self.fail_max,
            "circuitgate_reset_timeout": self.reset_timeout,
            "circuitgate_jitter": self.jitter,
        }

    def describe(self, concurrencies: Sequence[int] = ()) -> str:
        """One line saying what every arm runs (at each of ``concurrencies``, if given)."""
        processes = " or ".join(map(str, concurrencies)) or str(self.concurrency)
        return (
            f"{self.workers} workers x {processes} processes on a local SQS queue,"
            f" {self.broken} broken; {self.tasks} tasks of {self.work_s} s (failing in"
            f" {self.fail_s} s); breaker: fail_max={self.fail_max},"
            f" reset_timeout={self.reset_timeout} s, jitter={self.jitter}"
        )

    @property
    def timeout_s(self) -> float:
        """How long to wait for final outcomes before calling the rest lost.

        Generous: three times what the healthy workers alone need, plus a minute, because a
        task handed back late still has to wait its turn behind the whole queue.
        """
        healthy_slots = max(self.workers - 1, 1) * self.concurrency
        return 3 * self.tasks * self.work_s / healthy_slots + 60


@dataclasses.dataclass(frozen=True)
class Transition:
    """A change of one of a worker's circuits, as its event log recorded it."""

    at: float
    """Wall clock."""
    circuit: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class ArmStats:
    """The figures of one arm; the module docstring defines them."""

    tasks: int
    executions: int
    succeeded: int
    failed: int
    tasks_lost: int
    failed_share: float
    broken_worker_executions: int
    broken_worker_tasks: int
    broken_worker_share: float
    handed_back: int
    duplicate_successes: int
    trips: int
    max_broken_tasks_per_open_period: int | None
    makespan_s: float


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """Everything one arm produced: the raw record and the figures drawn from it."""

    arm: str
    scenario: Scenario
    started: float
    """Wall clock of the first publish; plots count time from here."""
    hostnames: tuple[str, ...]
    """The workers' Celery hostnames, as executions name them; the broken one first."""
    task_ids: tuple[str, ...]
    executions: tuple[Execution, ...]
    handed_back: Counter[str]
    """Per task id, how many of its failed executions were handed back to the queue."""
    transitions: tuple[Transition, ...]
    """The broken worker's circuit changes."""
    stats: ArmStats

    def open_periods(self) -> list[tuple[float, float]]:
        """The broken worker's open periods, as (start, end) wall clock, circuit by circuit."""
        periods: list[tuple[float, float]] = []
        opened: dict[str, float] = {}
        for change in sorted(self.transitions, key=lambda change: change.at):
            if change.new == "open":
                opened[change.circuit] = change.at
            elif change.circuit in opened:
                periods.append((opened.pop(change.circuit), change.at))
        periods.extend((at, self.started + self.stats.makespan_s) for at in opened.values())
        return sorted(periods)


@contextlib.contextmanager
def running(workers: Sequence[LabWorker]) -> Iterator[Sequence[LabWorker]]:
    """Start the workers side by side (start-up is mostly imports), stop them all at the end."""
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        # Warm shutdown, in parallel: each waits for its running tasks to finish.
        with concurrent.futures.ThreadPoolExecutor(max(len(workers), 1)) as pool:
            list(pool.map(lambda worker: worker.stop(), workers))


def publish(broker: Broker, count: int, *, queue: str, **task_kwargs: Any) -> list[str]:
    """Send ``count`` lab tasks to ``queue``; return their ids in order.

    Through a connection of its own rather than the app's pool, so one process can talk
    to several brokers in turn.
    """
    with app.connection_for_write(broker.url, transport_options=broker.transport_options) as conn:
        producer = conn.Producer()
        return [
            infer.apply_async((n,), task_kwargs, queue=queue, producer=producer).id
            for n in range(count)
        ]


def _transitions(events: Sequence[Event]) -> list[Transition]:
    return [
        Transition(e.at, e.circuit or "", e.old or "", e.new or "")
        for e in events
        if e.kind == "transition"
    ]


def _handed_back(events: Sequence[Event]) -> Counter[str]:
    """Per task id, how many of its executions were handed back after a counted failure."""
    return Counter(
        e.task_id for e in events if e.kind == "finished" and e.state == "IGNORED" and e.task_id
    )


def _final_times(events: Sequence[Event]) -> dict[str, tuple[str, float]]:
    """Task id -> (final outcome, when it was reached), for the tasks that have one."""
    final: dict[str, tuple[str, float]] = {}
    for event in sorted(events, key=lambda e: e.at):
        outcome = _FINAL_STATES.get(event.state or "")
        if event.kind != "finished" or outcome is None or event.task_id is None:
            continue
        if final.get(event.task_id, ("failure",))[0] == "failure":  # the first success stays
            final[event.task_id] = (outcome, event.at)
    return final


def _stats(
    started: float,
    task_ids: Sequence[str],
    executions: Sequence[Execution],
    events: Sequence[Event],
    transitions: Sequence[Transition],
    broken_host: str,
) -> ArmStats:
    wanted = set(task_ids)
    final = {i: outcome for i, outcome in _final_times(events).items() if i in wanted}
    handed_back = _handed_back(events)
    failed = sum(outcome == "failure" for outcome, _ in final.values())
    successes = Counter(e.id for e in executions if e.outcome == "success")
    broken = [e for e in executions if e.worker == broken_host]
    trips = sorted(change.at for change in transitions if change.new == "open")
    per_period = [0] * (len(trips) + 1)
    for execution in broken:
        per_period[bisect.bisect_left(trips, execution.start)] += 1
    tasks = len(task_ids)
    return ArmStats(
        tasks=tasks,
        executions=len(executions),
        succeeded=len(successes),
        failed=failed,
        tasks_lost=tasks - len(final),
        failed_share=failed / tasks if tasks else 0.0,
        broken_worker_executions=len(broken),
        broken_worker_tasks=len({e.id for e in broken}),
        broken_worker_share=len(broken) / len(executions) if executions else 0.0,
        handed_back=sum(handed_back.values()),
        duplicate_successes=sum(count - 1 for count in successes.values()),
        trips=len(trips),
        max_broken_tasks_per_open_period=max(per_period) if trips else None,
        makespan_s=max((at for _, at in final.values()), default=started) - started,
    )


def run_arm(scenario: Scenario, arm: str, broker: Broker, workdir: Path) -> ArmResult:
    """Run one arm on ``broker`` in a queue of its own; the records stay in ``workdir``.

    ``workdir`` is emptied first: the execution log and the event logs only ever grow.
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    queue = f"amplification-c{scenario.concurrency}-{arm}"
    workers = [
        LabWorker(
            name,
            broker,
            workdir,
            mode=ARMS[arm],
            concurrency=scenario.concurrency,
            queues=queue,
            conf=scenario.conf,
        )
        for name in scenario.worker_names
    ]
    workers[0].break_device()

    def events() -> list[Event]:
        return [event for worker in workers for event in worker.events.read()]

    with running(workers):
        started = time.time()
        task_ids = publish(
            broker, scenario.tasks, queue=queue, work_s=scenario.work_s, fail_s=scenario.fail_s
        )
        # Past the timeout the tasks still without a final outcome count as lost.
        with contextlib.suppress(TimedOut):
            eventually(
                lambda: set(task_ids) <= _final_times(events()).keys(),
                timeout=scenario.timeout_s,
                interval=0.25,
                what="every task's final outcome",
            )
    # The workers have stopped: their records are complete.
    executions = ExecutionLog(workdir / "executions.jsonl").read()
    recorded = events()
    transitions = _transitions(workers[0].events.read())
    return ArmResult(
        arm=arm,
        scenario=scenario,
        started=started,
        hostnames=tuple(worker.hostname for worker in workers),
        task_ids=tuple(task_ids),
        executions=tuple(executions),
        handed_back=_handed_back(recorded),
        transitions=tuple(transitions),
        stats=_stats(started, task_ids, executions, recorded, transitions, workers[0].hostname),
    )


Comparison = dict[int, dict[str, ArmResult]]
"""Concurrency -> arm -> result."""


def run_comparison(
    scenario: Scenario,
    workdir: Path,
    concurrencies: Sequence[int] = CONCURRENCIES,
    arms: Sequence[str] = tuple(ARMS),
) -> Comparison:
    """Every arm at every concurrency, one after another, on one local SQS endpoint (moto)."""
    results: Comparison = {}
    with sqs_broker() as broker:
        for concurrency in concurrencies:
            at = dataclasses.replace(scenario, concurrency=concurrency)
            results[concurrency] = {
                arm: run_arm(at, arm, broker, workdir / f"c{concurrency}" / arm) for arm in arms
            }
    return results


def summary(results: Comparison) -> dict[str, dict[str, dict[str, Any]]]:
    """The figures of every arm at every concurrency, ready for ``json.dumps``."""
    return {
        f"concurrency_{concurrency}": {
            arm: dataclasses.asdict(result.stats) for arm, result in arms.items()
        }
        for concurrency, arms in results.items()
    }


def format_table(results: Mapping[str, ArmResult]) -> str:
    """The arms of one concurrency side by side, one figure per row."""
    rows: list[tuple[str, Callable[[ArmStats], str]]] = [
        ("tasks succeeded", lambda s: f"{s.succeeded}/{s.tasks}"),
        ("tasks failed", lambda s: f"{s.failed_share:.1%} ({s.failed})"),
        ("work taken by the broken worker", lambda s: f"{s.broken_worker_share:.1%}"),
        ("tasks lost", lambda s: str(s.tasks_lost)),
        ("makespan", lambda s: f"{s.makespan_s:.1f} s"),
        ("executions (broken worker)", lambda s: f"{s.executions} ({s.broken_worker_executions})"),
        ("handed back", lambda s: str(s.handed_back)),
        ("trips of the broken worker", lambda s: str(s.trips) if s.trips else "-"),
        (
            "max broken tasks per open period",
            lambda s: (
                "-"
                if s.max_broken_tasks_per_open_period is None
                else str(s.max_broken_tasks_per_open_period)
            ),
        ),
    ]
    width = max(len(label) for label, _ in rows)
    header = " " * width + "".join(f"  {ARM_TITLES.get(arm, arm):>18}" for arm in results)
    lines = [header]
    for label, figure in rows:
        cells = "".join(f"  {figure(result.stats):>18}" for result in results.values())
        lines.append(f"{label:<{width}}{cells}")
    return "\n".join(lines)
