"""The operator's planner alone: one policy pass over N pods, steady and on a trip.

No API server and no endpoints: an observation of N running, read, marked pods (built with
the dev kit's plan builders), settled until nothing is left to write, then planned again with
the plan memo kept across passes, as the operator's loop does. A trip changes one pod's
reading; its pass is timed, its writes land, and the pass after it is timed too. This is
the CPU floor of a trip's latency in ``bench/operator_scale.py``, without the event loop,
the API writes or the machine's other processes.

Prints the figures and, as the last line, one JSON object.

    python bench/planner_pass.py [--pods 10000] [--trips 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from circuitgate_devkit.cluster.plan_builders import node, observe, pod, policy, reading, settle
from circuitgate_operator.contract import BreakerState
from circuitgate_operator.decide.memo import PlanMemo
from circuitgate_operator.decide.observation import PolicyObservation
from circuitgate_operator.decide.plan import plan_policy

NODES = 20


def timed(obs: PolicyObservation, memo: PlanMemo) -> tuple[float, PolicyObservation]:
    """One pass, in ms, and the observation once its writes have landed."""
    began = time.perf_counter()
    plan = plan_policy(obs, memo)
    return (time.perf_counter() - began) * 1000, settle(obs, plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--trips", type=int, default=10)
    args = parser.parse_args()

    pods = [
        pod(f"w{i:05d}", ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", node=f"n{i % NODES}")
        for i in range(args.pods)
    ]
    readings = {p.uid: reading(p, BreakerState.CLOSED) for p in pods}
    obs = observe(policy(), pods, readings, nodes=[node(f"n{i}") for i in range(NODES)])
    for _ in range(3):  # CircuitStates, conditions and status written: a settled start
        obs = settle(obs, plan_policy(obs))
    memo = PlanMemo()
    _, obs = timed(obs, memo)  # fills the memo

    steady, trip, after = [], [], []
    for i in range(args.trips):
        ms, obs = timed(dataclasses.replace(obs), memo)
        steady.append(ms)
        tripped = pods[(i * 37) % args.pods]
        changed = {**obs.readings, tripped.uid: reading(tripped, BreakerState.OPEN)}
        ms, obs = timed(dataclasses.replace(obs, readings=changed), memo)
        trip.append(ms)
        ms, obs = timed(dataclasses.replace(obs), memo)  # the pass that sees its own writes
        after.append(ms)

    figures = {
        "pods": args.pods,
        "steady_pass_ms_median": round(statistics.median(steady), 1),
        "trip_pass_ms_median": round(statistics.median(trip), 1),
        "trip_pass_ms_max": round(max(trip), 1),
        "pass_after_trip_ms_median": round(statistics.median(after), 1),
        "trips": args.trips,
    }
    print(
        f"{args.pods} pods: steady pass {figures['steady_pass_ms_median']} ms, trip pass "
        f"{figures['trip_pass_ms_median']} ms (max {figures['trip_pass_ms_max']}), the pass "
        f"after it {figures['pass_after_trip_ms_median']} ms (medians of {args.trips})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
