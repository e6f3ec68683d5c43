"""``make demo``: one broken worker among healthy ones, without a breaker, naive, and circuitgate.

Starts a local SQS endpoint (moto server) and real ``celery worker`` processes, runs the
failure-amplification scenario once per arm (`circuitgate.lab.scenario`), prints the
arms side by side and draws every worker's executions over time to
``<out>/amplification.png``. The workers' logs stay in ``<out>/runs/<arm>/``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .scenario import ArmResult, Scenario, format_table, run_arms, summary

__all__ = ("DEMO", "main", "plot")

DEMO = Scenario(workers=5, concurrency=2, tasks=150, work_s=1.5, fail_max=3, reset_timeout=3.0)
"""About two minutes on two cores, with a few trips of the broken worker's circuit to see."""

_HEALTHY = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive")
_TITLES = {"no_breaker": "no breaker", "naive": "naive (pybreaker per process)"}


def plot(results: Mapping[str, ArmResult], path: Path) -> None:
    """One panel per arm: cumulative executions per worker over time, failures marked.

    The axes are shared, so the makespans compare at a glance; the broken worker is red,
    and its circuit's open periods are shaded.
    """
    figure = Figure(figsize=(5 * len(results), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(results), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (arm, result) in zip(axes, results.items(), strict=True):
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
            shade = "broken worker's circuit open" if number == 0 else None
            ax.axvspan(
                start - result.started,
                end - result.started,
                color="tab:red",
                alpha=0.08,
                label=shade,
            )
        stats = result.stats
        ax.set_title(
            f"{_TITLES.get(arm, arm)}\n{stats.failed_share:.0%} failed, broken worker took"
            f" {stats.broken_worker_share:.0%}, {stats.tasks_lost} lost,"
            f" makespan {stats.makespan_s:.0f} s",
            fontsize=10,
        )
        ax.set_xlabel("seconds since the first task was published")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("executions so far (x: failed)")
    axes[-1].legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m circuitgate.lab.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory")
    args = parser.parse_args(argv)
    scenario = DEMO
    print(scenario.describe(), flush=True)
    began = time.monotonic()
    results = run_arms(scenario, args.out / "runs")
    print(format_table(results))
    png = args.out / "amplification.png"
    plot(results, png)
    print(f"plot: {png}; worker logs: {args.out / 'runs'}; took {time.monotonic() - began:.0f} s")
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
