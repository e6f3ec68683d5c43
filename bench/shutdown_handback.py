"""Shutdown hand-back: how long the messages a stopping worker holds wait for another worker.

On a local SQS endpoint (moto server) with a 300 s visibility timeout, a worker (prefork,
one process, prefetch 4) runs a long task and holds three more messages; another worker
waits idle. The first gets SIGTERM, as Kubernetes sends it, and SIGKILL ``--grace`` seconds
later if it is still running (``terminationGracePeriodSeconds``: its task outlasts it). For
each held message: seconds from the SIGTERM until the other worker starts it, without
circuitgate (Celery and kombu as they are) and with it, in one run. Without, the messages
come back only when the connection closes after the running task, or, when the worker is
killed first, after the visibility timeout. Takes about six minutes (the 300 s are waited
out); the last line is one JSON object.

    python bench/shutdown_handback.py [--grace 10] [--visibility-timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery

from circuitgate_devkit.lab.brokers import sqs_broker
from circuitgate_devkit.lab.workers import LabWorker
from circuitgate_devkit.waiting import eventually

HELD = 3


def run_arm(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One arm: seconds from SIGTERM until the other worker starts each held message."""
    with sqs_broker(visibility_timeout=args.visibility_timeout) as broker:
        producer = Celery("producer", set_as_current=False)
        producer.conf.update(broker.celery_config())
        prefetch = {"worker_prefetch_multiplier": 4}
        stopping = LabWorker("stopping", broker, workdir, mode=mode, conf=prefetch)
        other = LabWorker("other", broker, workdir, mode=mode, concurrency=HELD)
        try:
            stopping.start()
            running, *held = [
                producer.send_task("lab.infer", args=(n,), kwargs={"work_s": args.task_seconds}).id
                for n in range(1 + HELD)
            ]
            eventually(
                lambda: (
                    len(stopping.events.of("received")) == 1 + HELD
                    and stopping.events.of("started", task_id=running)
                ),
                timeout=60,
                what="the stopping worker holds its messages",
            )
            other.start()
            assert stopping.process is not None
            sigterm = time.time()
            os.kill(stopping.process.pid, signal.SIGTERM)
            killed = _kill_after(stopping, args.grace)

            def started() -> dict[str, float]:
                return {
                    e.task_id: e.at - sigterm
                    for e in other.events.of("started")
                    if e.task_id in held
                }

            wait = args.visibility_timeout + args.task_seconds + 60
            eventually(lambda: len(started()) == HELD, timeout=wait, interval=0.2)
            seconds = sorted(started().values())
        finally:
            for worker in (stopping, other):
                worker.stop(timeout=20)
            producer.close()
    return {
        "held": HELD,
        "killed_after_grace": killed,
        "seconds_to_start": [round(s, 2) for s in seconds],
        "p50_seconds": round(statistics.median(seconds), 2),
        "max_seconds": round(max(seconds), 2),
    }


def _kill_after(worker: LabWorker, grace: float) -> bool:
    """SIGKILL the worker if it still runs ``grace`` seconds on, as the kubelet does."""
    assert worker.process is not None
    try:
        worker.process.wait(grace)
        return False
    except subprocess.TimeoutExpired:  # still running its task
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=10.0, help="SIGTERM to SIGKILL, seconds")
    parser.add_argument("--visibility-timeout", type=int, default=300)
    parser.add_argument("--task-seconds", type=float, default=30.0, help="the running task")
    args = parser.parse_args()
    print(
        f"SQS (moto), visibility timeout {args.visibility_timeout} s; a {args.task_seconds:g} s "
        f"task runs, {HELD} messages held; SIGKILL {args.grace:g} s after SIGTERM",
        flush=True,
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="circuitgate-bench-") as tmp:
        for mode, name in (("none", "without circuitgate"), ("circuitgate", "circuitgate")):
            workdir = Path(tmp) / mode
            workdir.mkdir()
            results[name] = run_arm(mode, args, workdir)
            arm = results[name]
            print(
                f"{name:>20}: held messages start {arm['p50_seconds']} s (median), "
                f"{arm['max_seconds']} s (last) after SIGTERM",
                flush=True,
            )
    print(
        json.dumps(
            {
                "visibility_timeout": args.visibility_timeout,
                "grace_seconds": args.grace,
                "task_seconds": args.task_seconds,
                "arms": results,
            }
        )
    )


if __name__ == "__main__":
    main()
