"""An example Celery app guarded by circuitgate: a GPU-style inference task.

Run a worker:   celery -A app worker --concurrency=2
Queue tasks:    python app.py enqueue 100

The broker comes from CELERY_BROKER_URL (Redis here; SQS works the same with celery[sqs]).
To break a worker the way a failed GPU would, create the file named by EXAMPLE_FAULT_FILE in
its container (``kubectl exec POD -- touch /tmp/gpu-broken``): from then on every task fails
fast, the worker's circuit opens, it stops fetching, and the operator marks its pod unready.
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery

import circuitgate

app = Celery("inference", broker=os.environ.get("CELERY_BROKER_URL", "redis://redis:6379/0"))
app.conf.update(
    # circuitgate runs guarded tasks acks-late; a prefetch of one keeps a broken worker from
    # holding messages it will not run.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    circuitgate_fail_max=3,  # counted failures in a row that open the circuit
    circuitgate_reset_timeout=30,  # first open period; doubles per trip, up to 10 minutes
    circuitgate_ignore_exceptions=["app.BadInput"],  # a bad input is not a broken worker
    circuitgate_endpoint_port=9808,  # the container port the manifests call "circuitgate"
)
circuitgate.install(app)

FAULT_FILE = os.environ.get("EXAMPLE_FAULT_FILE", "/tmp/gpu-broken")
TASK_SECONDS = float(os.environ.get("EXAMPLE_TASK_SECONDS", "2"))


class DeviceFault(RuntimeError):
    """What a broken GPU looks like to a task."""


class BadInput(ValueError):
    """The input's fault, not the worker's: never counts against the breaker."""


@app.task(name="example.infer")
def infer(item: int) -> str:
    if item < 0:
        raise BadInput(f"no such item: {item}")
    if os.path.exists(FAULT_FILE):
        time.sleep(0.05)
        raise DeviceFault("CUDA error: device unavailable")
    time.sleep(TASK_SECONDS)
    return f"item {item} done on {os.environ.get('HOSTNAME', 'localhost')}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "enqueue":
        for item in range(int(argv[1])):
            infer.delay(item)
        print(f"queued {argv[1]} tasks")
        return 0
    print("usage: python app.py enqueue COUNT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
