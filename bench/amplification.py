"""Failure amplification: one broken worker among healthy ones; no breaker, snippet, circuitgate.

Runs the scenario of ``make demo`` (`circuitgate_devkit.lab.scenario`) at the size of
issue 13's measurement on a local SQS endpoint (moto server): every arm (no breaker, the
published snippet of `circuitgate_devkit.lab.seed_snippet`, circuitgate) at concurrency 1
and 2, in one run. Prints the arms side by side per concurrency, whether circuitgate met
its targets, and as the last line one JSON object keyed by concurrency, then arm. Takes
about two and a half minutes on two cores.

    python bench/amplification.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from circuitgate_devkit.lab.scenario import (
    CONCURRENCIES,
    ArmStats,
    Scenario,
    format_table,
    run_comparison,
    summary,
)

SCENARIO = Scenario(workers=4, tasks=40, work_s=2.0, fail_s=0.02, fail_max=3, reset_timeout=5.0)


def targets(stats: ArmStats, scenario: Scenario) -> list[tuple[str, bool]]:
    """circuitgate's targets, each with whether this run met it."""
    per_period = stats.max_broken_tasks_per_open_period
    return [
        ("0 tasks lost", stats.tasks_lost == 0),
        (
            f"broken worker takes <= fail_max + 1 = {scenario.fail_max + 1} tasks per open period",
            per_period is not None and per_period <= scenario.fail_max + 1,
        ),
        ("<= 1% of tasks fail", stats.failed_share <= 0.01),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the workers' logs in this directory")
    args = parser.parse_args()
    s = SCENARIO
    print(s.describe(CONCURRENCIES), flush=True)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="circuitgate-bench-") as tmp:
        results = run_comparison(s, args.keep or Path(tmp))
    for concurrency, arms in results.items():
        print(f"\nconcurrency {concurrency}\n{format_table(arms)}")
        for target, met in targets(arms["circuitgate"].stats, s):
            print(f"circuitgate target {target}: {'met' if met else 'MISSED'}")
    print(f"\ntook {time.monotonic() - began:.0f} s")
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
