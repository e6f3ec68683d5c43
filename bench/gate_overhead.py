"""What circuitgate costs a healthy worker: no-op task throughput with it installed and without.

One real Redis broker, one ``celery worker`` (prefork) per run, the same settings in both
modes (``circuitgate`` and ``none``). Each run queues the tasks first, then starts the
worker and measures from the end of the first 5% of tasks to the last (start-up and
warm-up stay out). Runs alternate between the modes, pairs in swapped order, so slow
drift on a busy machine hits both alike. ``ratio`` is the median over rounds of with /
without in the same round (neighbours in time share the machine's load best); each
mode's throughput is its median. Wall-clock throughput on a shared machine swings by
10-20% between runs, so two steadier figures come along: the worker's CPU per task (from
/proc) and circuitgate's own per-task work timed in-process. Prints every run and, as the
last line, one JSON object.

    python bench/gate_overhead.py [--tasks N] [--rounds N] [--hot-path-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from circuitgate import Settings, SharedCircuitBreaker
from circuitgate_devkit.lab.brokers import Broker, redis_broker
from circuitgate_devkit.lab.scenario import publish, running
from circuitgate_devkit.lab.workers import ExecutionLog, LabWorker

CONCURRENCY = 2
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """CPU time used so far by process ``pid`` and its children (the prefork pool)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone in the meantime
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def throughput(broker: Broker, mode: str, workdir: Path, tasks: int) -> tuple[float, float]:
    """One worker in ``mode`` drains ``tasks`` queued no-op tasks: (tasks/s, worker CPU ms/task).

    Both leave out the first 5% of tasks (start-up, warm-up). CPU per task is read from
    /proc and hardly depends on what else the machine runs, unlike wall-clock throughput.
    """
    workdir.mkdir(parents=True)
    queue = f"overhead-{workdir.name}"
    publish(broker, tasks, queue=queue, work_s=0.0, fail_s=0.0)
    # No per-task events: the lab's own records would add to both modes' cost per task.
    worker = LabWorker(
        "bench", broker, workdir, mode=mode, concurrency=CONCURRENCY, queues=queue,
        record_tasks=False,
    )  # fmt: skip
    log = ExecutionLog(workdir / "executions.jsonl")
    skip = max(tasks // 20, 1)
    samples: list[tuple[int, float]] = []  # (tasks done, worker CPU seconds)
    with running([worker]):
        assert worker.process is not None
        deadline = time.monotonic() + 600
        done = 0
        while time.monotonic() < deadline and done < tasks:
            time.sleep(0.2)
            # Counting lines is cheap, so polling takes little CPU from the worker measured.
            done = log.path.read_bytes().count(b"\n") if log.path.exists() else 0
            if done >= skip and (not samples or done >= tasks):
                samples.append((done, _cpu_seconds(worker.process.pid)))
    ends = sorted(execution.end for execution in log.read())
    if len(ends) < tasks or len(samples) < 2:
        raise RuntimeError(f"{mode}: only {len(ends)} of {tasks} tasks ran:\n{worker.output()}")
    (first_done, first_cpu), (last_done, last_cpu) = samples[0], samples[-1]
    cpu_ms_per_task = 1000 * (last_cpu - first_cpu) / (last_done - first_done)
    return (len(ends) - skip) / (ends[-1] - ends[skip - 1]), cpu_ms_per_task


def hot_path_us_per_task(repeat: int = 20_000) -> float:
    """circuitgate's own work per task with the circuit closed, in-process, in microseconds.

    What a worker adds per task: the gate's admit on arrival, the guard's admit, its
    trial_running around the task and its record_success in the pool, and (about) two
    can_consume() checks. Unlike the throughput runs this hardly depends on the machine's
    other load: a floor for the overhead.
    """
    breaker = SharedCircuitBreaker(Settings())
    began = time.perf_counter()
    for n in range(repeat):
        token = str(n)
        breaker.fetch_allowed()
        breaker.fetch_allowed()
        breaker.admit(token)
        breaker.admit(token)
        with breaker.trial_running(token):
            pass
        breaker.record_success(token)
    return 1e6 * (time.perf_counter() - began) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000, help="no-op tasks per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode")
    parser.add_argument(
        "--hot-path-only", action="store_true", help="only the in-process figure (seconds)"
    )
    args = parser.parse_args()
    if args.hot_path_only:
        print(json.dumps({"hot_path_us_per_task": hot_path_us_per_task()}))
        return
    print(f"{args.tasks} no-op tasks per run, 1 worker x {CONCURRENCY} processes, Redis broker")
    rates: dict[str, list[float]] = {"circuitgate": [], "none": []}
    cpu: dict[str, list[float]] = {"circuitgate": [], "none": []}
    with redis_broker() as broker, tempfile.TemporaryDirectory(prefix="circuitgate-gate-") as tmp:
        for round_ in range(args.rounds):
            order = ("none", "circuitgate") if round_ % 2 == 0 else ("circuitgate", "none")
            for mode in order:
                rate, cpu_ms = throughput(broker, mode, Path(tmp) / f"{round_}-{mode}", args.tasks)
                rates[mode].append(rate)
                cpu[mode].append(cpu_ms)
                print(
                    f"round {round_ + 1} {mode:>11}: {rate:7.1f} tasks/s,"
                    f" worker CPU {cpu_ms:.3f} ms/task",
                    flush=True,
                )
    with_rate, without_rate = (statistics.median(rates[m]) for m in ("circuitgate", "none"))
    ratio = statistics.median(
        w / wo for w, wo in zip(rates["circuitgate"], rates["none"], strict=True)
    )
    with_cpu, without_cpu = (statistics.median(cpu[m]) for m in ("circuitgate", "none"))
    print(f"median with circuitgate {with_rate:.1f} tasks/s, without {without_rate:.1f} tasks/s")
    print(f"ratio {ratio:.3f} (target >= 0.97: {'met' if ratio >= 0.97 else 'MISSED'})")
    print(
        f"worker CPU per task: with {with_cpu:.3f} ms, without {without_cpu:.3f} ms"
        f" (CPU-bound throughput ratio {without_cpu / with_cpu:.3f})"
    )
    hot_path = hot_path_us_per_task()
    print(
        f"circuitgate's own work per task (in-process): {hot_path:.1f} us,"
        f" {hot_path / 10 / without_cpu:.2f}% of a worker's CPU per task"
    )
    print(
        json.dumps(
            {
                "ratio": ratio,
                "with_tasks_per_s": with_rate,
                "without_tasks_per_s": without_rate,
                "cpu_ratio": without_cpu / with_cpu,
                "with_cpu_ms_per_task": with_cpu,
                "without_cpu_ms_per_task": without_cpu,
                "hot_path_us_per_task": hot_path,
                "runs_with_tasks_per_s": rates["circuitgate"],
                "runs_without_tasks_per_s": rates["none"],
                "tasks_per_run": args.tasks,
            }
        )
    )


if __name__ == "__main__":
    main()
