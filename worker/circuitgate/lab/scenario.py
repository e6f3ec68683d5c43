"""Failure amplification, measured: real workers on one queue, one broken, one arm per mode.

``make demo`` and ``bench/amplification.py`` both run this scenario, so the figures they
print come from the same code. One arm starts the workers of one lab mode (``none``,
``naive`` or ``circuitgate``), publishes the tasks, waits for every task's final outcome
and reads back what happened from the execution log and the workers' logs.

What the figures mean:

- a task's *final outcome* is success (it succeeded somewhere) or failure (a failed
  execution that was not handed back to the queue: without circuitgate every failure is
  final, with it a counted failure is handed back and the task runs again elsewhere);
- ``failed_share``: tasks whose final outcome is failure with no success, over tasks
  published;
- ``tasks_lost``: published tasks with no final outcome when the arm ends;
- ``broken_worker_share``: the broken worker's executions over all executions, that is
  the share of the pool's work that the broken worker took (without hand-back each task
  runs once, so it is also the share of tasks it took);
- ``max_broken_tasks_per_open_period``: the broken worker's executions between two trips
  of its circuit (executions grouped by start time; the first group ends at the first
  trip), at most; only circuitgate's breaker logs its trips, so the other arms have none;
- ``makespan_s``: from the first publish to the last task's final outcome.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import dataclasses
import datetime
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .app import app, infer
from .brokers import Broker, sqs_broker
from .workers import Execution, ExecutionLog, LabWorker

__all__ = (
    "ARMS",
    "ArmResult",
    "ArmStats",
    "Scenario",
    "Transition",
    "format_table",
    "publish",
    "run_arm",
    "run_arms",
    "running",
    "summary",
)

ARMS: Mapping[str, str] = {"no_breaker": "none", "naive": "naive", "circuitgate": "circuitgate"}
"""Arm name, as reported, to the lab app's mode."""

_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] (.*)$")
# State names as the breaker logs them ("half-open" or "half_open"); a trip is "-> open".
_TRANSITION = re.compile(r"^circuit \S+: (\w[\w-]*) -> (\w[\w-]*) ")
_HANDED_BACK = re.compile(r"^task (\S+) failed .* on delivery \d+; handed back to the queue$")


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
        """Breaker settings; the naive mode builds its per-process pybreaker from them too."""
        return {
            "circuitgate_fail_max": self.fail_max,
            "circuitgate_reset_timeout": self.reset_timeout,
            "circuitgate_jitter": self.jitter,
        }

    def describe(self) -> str:
        """One line saying what every arm runs."""
        return (
            f"{self.workers} workers x {self.concurrency} processes on a local SQS queue,"
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
    """A change of a worker's circuit, as its log reports it."""

    at: float
    """Wall clock (the log's millisecond resolution)."""
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
        """The broken worker's open periods, as (start, end) wall clock."""
        periods: list[tuple[float, float]] = []
        opened: float | None = None
        for change in self.transitions:
            if change.new == "open":
                opened = change.at
            elif opened is not None:
                periods.append((opened, change.at))
                opened = None
        if opened is not None:
            periods.append((opened, self.started + self.stats.makespan_s))
        return periods


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


def _read_worker_log(path: Path) -> tuple[list[Transition], Counter[str]]:
    transitions: list[Transition] = []
    handed_back: Counter[str] = Counter()
    if not path.exists():
        return transitions, handed_back
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        stamp, message = match.groups()
        if change := _TRANSITION.match(message):
            at = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            transitions.append(Transition(at, change[1], change[2]))
        elif handback := _HANDED_BACK.match(message):
            handed_back[handback[1]] += 1
    return transitions, handed_back


def _final_times(
    task_ids: Sequence[str], executions: Sequence[Execution], handed_back: Counter[str]
) -> dict[str, tuple[str, float]]:
    """Task id -> (final outcome, when it was reached), for the tasks that have one."""
    by_task: dict[str, list[Execution]] = {task_id: [] for task_id in task_ids}
    for execution in executions:
        by_task.setdefault(execution.id, []).append(execution)
    final: dict[str, tuple[str, float]] = {}
    for task_id in task_ids:
        runs = sorted(by_task[task_id], key=lambda e: e.end)
        successes = [e for e in runs if e.outcome == "success"]
        failures = [e for e in runs if e.outcome == "failure"]
        if successes:
            final[task_id] = ("success", successes[0].end)
        elif len(failures) > handed_back[task_id]:
            final[task_id] = ("failure", failures[-1].end)
    return final


def _stats(
    started: float,
    task_ids: Sequence[str],
    executions: Sequence[Execution],
    handed_back: Counter[str],
    transitions: Sequence[Transition],
    broken_host: str,
) -> ArmStats:
    final = _final_times(task_ids, executions, handed_back)
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
    """Run one arm on ``broker`` in a queue of its own; logs stay in ``workdir``.

    ``workdir`` is emptied first: the execution log and the workers' logs only ever grow.
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    queue = f"amplification-{arm}"
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
    log = ExecutionLog(workdir / "executions.jsonl")

    def observe() -> tuple[list[Execution], Counter[str], list[Transition]]:
        handed_back: Counter[str] = Counter()
        for worker in workers:
            handed_back += _read_worker_log(worker.logfile)[1]
        return log.read(), handed_back, _read_worker_log(workers[0].logfile)[0]

    with running(workers):
        started = time.time()
        task_ids = publish(
            broker, scenario.tasks, queue=queue, work_s=scenario.work_s, fail_s=scenario.fail_s
        )
        deadline = time.monotonic() + scenario.timeout_s
        settled_once = False
        while time.monotonic() < deadline:
            executions, handed_back, _ = observe()
            settled = len(_final_times(task_ids, executions, handed_back)) == len(task_ids)
            # A failure is logged a moment before its hand-back: ask twice before believing.
            if settled and settled_once:
                break
            settled_once = settled
            time.sleep(0.5)
    # The workers have stopped: their logs are complete.
    executions, handed_back, transitions = observe()
    return ArmResult(
        arm=arm,
        scenario=scenario,
        started=started,
        hostnames=tuple(worker.hostname for worker in workers),
        task_ids=tuple(task_ids),
        executions=tuple(executions),
        handed_back=handed_back,
        transitions=tuple(transitions),
        stats=_stats(
            started,
            task_ids,
            executions,
            handed_back,
            transitions,
            workers[0].hostname,
        ),
    )


def run_arms(
    scenario: Scenario, workdir: Path, arms: Sequence[str] = tuple(ARMS)
) -> dict[str, ArmResult]:
    """Run the arms one after another on one local SQS endpoint (moto server)."""
    results: dict[str, ArmResult] = {}
    with sqs_broker() as broker:
        for arm in arms:
            results[arm] = run_arm(scenario, arm, broker, workdir / arm)
    return results


def summary(results: Mapping[str, ArmResult]) -> dict[str, dict[str, Any]]:
    """The figures of every arm, ready for ``json.dumps``."""
    return {arm: dataclasses.asdict(result.stats) for arm, result in results.items()}


def format_table(results: Mapping[str, ArmResult]) -> str:
    """The arms side by side, one figure per row."""
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
    header = " " * width + "".join(f"  {arm:>16}" for arm in results)
    lines = [header]
    for label, figure in rows:
        cells = "".join(f"  {figure(result.stats):>16}" for result in results.values())
        lines.append(f"{label:<{width}}{cells}")
    return "\n".join(lines)
