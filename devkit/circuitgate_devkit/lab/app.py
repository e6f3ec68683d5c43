"""The lab's Celery app: a GPU-like task that takes a while when healthy and fails fast when broken.

Everything is set through environment variables, so one module serves every worker of a
scenario (``celery -A circuitgate_devkit.lab.app worker``):

- ``CIRCUITGATE_LAB_BROKER``: JSON of `Broker.celery_config()`;
- ``CIRCUITGATE_LAB_MODE``: ``circuitgate`` (default), ``seed_snippet`` (the published
  snippet, `circuitgate_devkit.lab.seed_snippet`) or ``none``;
- ``CIRCUITGATE_LAB_CONF``: JSON of extra ``app.conf`` keys (``circuitgate_*`` among them;
  the snippet's breaker takes ``circuitgate_fail_max`` and ``circuitgate_reset_timeout``;
  the lab's own ``lab_brpop_timeout`` sets how long kombu's Redis BRPOP blocks, which is its
  transport's attribute, 1 s, and no transport option);
- ``CIRCUITGATE_LAB_FAULT``: a path; while that file exists this worker is broken, the
  way the file says (`FAULTS`: empty raises `DeviceFault`);
- ``CIRCUITGATE_LAB_BLOCK``: a path; `loop_blocker.SIGNAL` blocks the main process while
  it exists;
- ``CIRCUITGATE_LAB_LOG``: a path; every execution appends one JSON line to it;
- ``CIRCUITGATE_LAB_EVENTS``: a path; the worker's events go there
  (`circuitgate_devkit.lab.recorder`), its tasks' too unless ``CIRCUITGATE_LAB_RECORD_TASKS``
  is ``0``."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pybreaker
from celery import Celery, signals
from kombu.transport import redis as kombu_redis

import circuitgate

from . import loop_blocker, seed_snippet
from .recorder import EVENTS_ENV, CircuitRecorder, RecorderStep, record_worker
from .records import append_record

__all__ = (
    "AFTER_HAND_BACK",
    "AFTER_SUCCESS",
    "DIES_ONCE_AFTER",
    "FAULTS",
    "FLAKY",
    "SIGKILL_ONCE",
    "SLOW",
    "DeviceFault",
    "app",
    "device_probe",
    "infer",
    "preprocess",
    "retried",
)


class DeviceFault(RuntimeError):
    """What a broken GPU looks like to the task."""


device_probe = circuitgate.probes.command(
    "test", "!", "-e", os.environ.get("CIRCUITGATE_LAB_FAULT", "/nonexistent")
)
"""For ``circuitgate_probe="circuitgate_devkit.lab.app.device_probe"``: fails while the device
is broken (the fault file exists), as ``nvidia-smi`` would on a dead GPU."""

app = Celery("lab")
app.conf.update(json.loads(os.environ.get("CIRCUITGATE_LAB_BROKER", "{}")))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
app.conf.update(json.loads(os.environ.get("CIRCUITGATE_LAB_CONF", "{}")))
if "lab_brpop_timeout" in app.conf:
    kombu_redis.Transport.brpop_timeout = int(app.conf["lab_brpop_timeout"])

MODE = os.environ.get("CIRCUITGATE_LAB_MODE", "circuitgate")
EVENTS = os.environ.get(EVENTS_ENV)
if EVENTS:
    record_worker(EVENTS, tasks=os.environ.get("CIRCUITGATE_LAB_RECORD_TASKS") != "0")

_snippet_breaker: pybreaker.CircuitBreaker | None = None
if MODE == "circuitgate":
    circuitgate.install(app)
    app.steps["worker"].add(RecorderStep)
elif MODE == "seed_snippet":
    _snippet_breaker = seed_snippet.install(
        app,
        fail_max=int(app.conf.get("circuitgate_fail_max", 5)),
        reset_timeout=float(app.conf.get("circuitgate_reset_timeout", 60)),
    )
    if EVENTS:
        _snippet_breaker.add_listener(CircuitRecorder(EVENTS))
elif MODE != "none":
    raise ValueError(f"CIRCUITGATE_LAB_MODE={MODE!r}: circuitgate, seed_snippet or none")


def _log(**record: Any) -> None:
    path = os.environ.get("CIRCUITGATE_LAB_LOG")
    if path:
        append_record(path, **record)


def _raise() -> None:
    raise DeviceFault("CUDA error: device unavailable")


FAULTS: dict[str, Callable[[], object]] = {
    "": _raise,
    "sigkill": lambda: os.kill(os.getpid(), signal.SIGKILL),  # the OOM killer
    "segfault": lambda: ctypes.string_at(0),  # a crash in a native library
    "abort": os.abort,
    "hang": lambda: time.sleep(3600),  # a hung device: only a time limit ends it
}
"""How a broken device shows itself, by the content of the fault file."""


def _sigkill_once() -> None:
    os.unlink(os.environ["CIRCUITGATE_LAB_FAULT"])  # repaired for the next task
    os.kill(os.getpid(), signal.SIGKILL)


SLOW = "slow"
"""A degraded device: every task works, three times as slowly (`_work`)."""

FLAKY = "flaky"
"""A failing device that never fails many in a row: 30 % of tasks at random (`_work`)."""

SIGKILL_ONCE = "sigkill once"
FAULTS[SIGKILL_ONCE] = _sigkill_once
AFTER_SUCCESS = "sigkill after success"
AFTER_HAND_BACK = "sigkill after hand-back"
FAULTS[AFTER_HAND_BACK] = _raise  # fails as a broken device does, then dies (below)
DIES_ONCE_AFTER = {AFTER_SUCCESS: "SUCCESS", AFTER_HAND_BACK: "IGNORED"}
"""Fault file contents whose child dies once (the file goes) in ``task_postrun`` with the
task in that state: after its result was stored, or after its copy was handed back, as a
crash in user cleanup code or the OOM killer would kill it before the main process hears."""


signals.worker_init.connect(loop_blocker.install, weak=False)


@signals.task_postrun.connect
def _die_once_after(state: str | None = None, **_: Any) -> None:
    fault = os.environ.get("CIRCUITGATE_LAB_FAULT")
    if not fault or not os.path.exists(fault):
        return
    with open(fault) as how:
        if DIES_ONCE_AFTER.get(how.read().strip()) != state:
            return
    os.unlink(fault)
    os.kill(os.getpid(), signal.SIGKILL)


def _work(work_s: float, fail_s: float, poison: bool) -> str:
    fault = os.environ.get("CIRCUITGATE_LAB_FAULT")
    if poison:
        time.sleep(fail_s)
        raise ValueError("poison message: this input fails everywhere")
    if fault and os.path.exists(fault):
        with open(fault) as how:
            how_it_fails = how.read().strip()
        if how_it_fails == SLOW:
            time.sleep(2 * work_s)
        elif how_it_fails == FLAKY:
            if random.random() < 0.3:
                time.sleep(fail_s)
                _raise()
        elif how_it_fails in FAULTS:
            time.sleep(fail_s)
            FAULTS[how_it_fails]()
    time.sleep(work_s)
    return "ok"


def _logged(task: Any, n: int, work: Callable[[], Any]) -> Any:
    """Run ``work`` and append what happened to the execution log."""
    started = time.time()
    record = {"id": task.request.id, "n": n, "start": started}
    record["worker"] = task.request.hostname or socket.gethostname()
    try:
        result = work()
    except Exception as exc:
        _log(**record, outcome="failure", error=type(exc).__name__, end=time.time())
        raise
    _log(**record, outcome="success", end=time.time())
    return result


@app.task(bind=True, name="lab.infer")
def infer(
    self: Any, n: int, work_s: float = 1.0, fail_s: float = 0.02, poison: bool = False
) -> str:
    """Pretend to run inference on item ``n`` on the worker's GPU."""
    work = functools.partial(_work, work_s, fail_s, poison)
    if _snippet_breaker is not None:
        work = functools.partial(_snippet_breaker.call, work)
    result: str = _logged(self, n, work)
    return result


@app.task(bind=True, name="lab.preprocess")
def preprocess(self: Any, n: int, work_s: float = 0.1) -> None:
    """Pretend to prepare item ``n`` on the CPU: a broken GPU does not touch it."""
    _logged(self, n, functools.partial(time.sleep, work_s))


@app.task(bind=True, name="lab.retried", max_retries=3)
def retried(self: Any, n: int, countdown: float = 2.0, work_s: float = 0.1) -> None:
    """Ask to be retried later (an ETA message) on the first delivery, then run."""
    if not self.request.retries:
        raise self.retry(countdown=countdown)
    _logged(self, n, functools.partial(time.sleep, work_s))
