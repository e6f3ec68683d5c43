"""Failure amplification: one broken worker among healthy ones, with no breaker, naive, circuitgate.

Runs the scenario of ``make demo`` (`circuitgate.lab.scenario`) at a larger size on a
local SQS endpoint (moto server), all three arms in one run, then prints the arms side
by side, whether circuitgate met its targets, and as the last line one JSON object with a
key per arm. Takes about two minutes on two cores.

    python bench/amplification.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from circuitgate.lab.scenario import ArmStats, Scenario, format_table, run_arms, summary

SCENARIO = Scenario(
    workers=5, concurrency=2, tasks=200, work_s=2.0, fail_s=0.02, fail_max=3, reset_timeout=5.0
)


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
    print(s.describe(), flush=True)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="circuitgate-bench-") as tmp:
        results = run_arms(s, args.keep or Path(tmp))
    print(format_table(results))
    for target, met in targets(results["circuitgate"].stats, s):
        print(f"circuitgate target {target}: {'met' if met else 'MISSED'}")
    print(f"took {time.monotonic() - began:.0f} s")
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
