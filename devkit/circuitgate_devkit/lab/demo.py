"""``make demo``: one broken worker among healthy ones, with no breaker, the snippet, circuitgate.

Starts a local SQS endpoint (moto server) and real ``celery worker`` processes, runs the
failure-amplification scenario once per arm at concurrency 1 and 2
(`circuitgate_devkit.lab.scenario`), prints the arms side by side and draws every worker's
executions over time to ``<out>/amplification.png``. The workers' records and logs stay in
``<out>/runs/c<concurrency>/<arm>/``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .scenario import (
    ARM_TITLES,
    CONCURRENCIES,
    Comparison,
    Scenario,
    format_table,
    run_comparison,
    summary,
)

__all__ = ("DEMO", "main", "plot")

DEMO = Scenario(workers=4, tasks=20, work_s=1.0, fail_max=3, reset_timeout=2.0)
"""About a minute on two cores for all six runs, with a few trips of the broken worker to see."""

_HEALTHY = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive")


def plot(results: Comparison, path: Path) -> None:
    """One panel per arm and concurrency: cumulative executions per worker over time.

    A row per concurrency, a column per arm. The axes are shared, so the makespans compare
    at a glance; the broken worker is red, failures are marked and its circuits' open
    periods are shaded.
    """
    columns = max(len(arms) for arms in results.values())
    figure = Figure(figsize=(5 * columns, 4.4 * len(results)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(results), columns, sharex=True, sharey=True, squeeze=False)
    panels = [
        (ax, concurrency, arm, result)
        for row, (concurrency, arms) in zip(grid, results.items(), strict=True)
        for ax, (arm, result) in zip(row, arms.items(), strict=False)
    ]
    for ax, concurrency, arm, result in panels:
        for index, host in enumerate(result.hostnames):
            broken = index == 0
            color = "tab:red" if broken else _HEALTHY[(index - 1) % len(_HEALTHY)]
            # Healthy workers keep in step: thinner lines on top keep every one visible.
            width = 1.5 if broken else 1.0 + 3.0 * (len(result.hostnames) - index) / 4
            runs = sorted((e for e in result.executions if e.worker == host), key=lambda e: e.end)
            times = [e.end - result.started for e in runs]
            label = f"{host.split('@')[0]} (broken)" if broken else host.split("@")[0]
            ax.step(
                [0.0, *times],
                range(len(runs) + 1),
                where="post",
                color=color,
                lw=width,
                label=label,
            )
            failed = [i for i, e in enumerate(runs) if e.outcome == "failure"]
            if failed:
                ax.plot(
                    [times[i] for i in failed],
                    [i + 1 for i in failed],
                    "x",
                    color=color,
                    markersize=4,
                )
        for number, (start, end) in enumerate(result.open_periods()):
            shade = "broken worker's circuit(s) open" if number == 0 else None
            ax.axvspan(
                start - result.started,
                end - result.started,
                color="tab:red",
                alpha=0.08,
                label=shade,
            )
        stats = result.stats
        ax.set_title(
            f"{ARM_TITLES.get(arm, arm)}, concurrency {concurrency}\n"
            f"{stats.failed_share:.0%} failed, broken worker took"
            f" {stats.broken_worker_share:.0%}, {stats.tasks_lost} lost,"
            f" makespan {stats.makespan_s:.0f} s",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
    for ax in grid[-1]:
        ax.set_xlabel("seconds since the first task was published")
    for ax in grid[:, 0]:
        ax.set_ylabel("executions so far (x: failed)")
    grid[0, -1].legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m circuitgate_devkit.lab.demo", description=__doc__
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory")
    args = parser.parse_args(argv)
    print(DEMO.describe(CONCURRENCIES), flush=True)
    began = time.monotonic()
    results = run_comparison(DEMO, args.out / "runs")
    for concurrency, arms in results.items():
        print(f"\nconcurrency {concurrency}\n{format_table(arms)}")
    png = args.out / "amplification.png"
    plot(results, png)
    print(f"\nplot: {png}; records: {args.out / 'runs'}; took {time.monotonic() - began:.0f} s")
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
