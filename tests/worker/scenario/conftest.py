"""Real brokers and real ``celery worker`` processes for the integration tests.

Nothing here skips: when redis-server or moto cannot start, the test fails and says why.
The tests read what the workers did from structured records (``lab.log``, each worker's
``events``, its endpoint), never from its log wording; they wait with `eventually`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from circuitgate_devkit.lab.brokers import Broker, rabbitmq_broker, redis_broker, sqs_broker
from circuitgate_devkit.lab.workers import ExecutionLog, LabWorker

BROKERS = {"sqs": sqs_broker, "redis": redis_broker, "rabbitmq": rabbitmq_broker}


class Lab:
    """One test's broker, workers, producer and execution log."""

    def __init__(self, broker: Broker, workdir: Path) -> None:
        self.broker = broker
        self.workdir = workdir
        self.workers: list[LabWorker] = []
        self.log = ExecutionLog(workdir / "executions.jsonl")
        self.producer = Celery("producer", set_as_current=False)
        self.producer.conf.update(broker.celery_config())

    def worker(
        self, name: str, *, broken: bool = False, start: bool = True, **options: Any
    ) -> LabWorker:
        worker = LabWorker(name, self.broker, self.workdir, **options)
        if broken:
            worker.break_device()
        self.workers.append(worker)
        return worker.start() if start else worker

    def send(
        self, count: int, task: str = "lab.infer", queue: str | None = None, **kwargs: Any
    ) -> list[str]:
        """Publish ``count`` lab tasks; return their ids in order."""
        return [
            self.producer.send_task(task, args=(n,), kwargs=kwargs, queue=queue).id
            for n in range(count)
        ]

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=20)
        self.producer.close()


@pytest.fixture(params=sorted(BROKERS))
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Start a broker of a given kind (with options) and return a Lab around it."""
    with contextlib.ExitStack() as stack:

        def make(kind: str, **broker_options: Any) -> Lab:
            if kind == "rabbitmq":  # a dead consumer's messages come back at once: no timeout
                broker_options.pop("visibility_timeout", None)
            broker = stack.enter_context(BROKERS[kind](**broker_options))
            lab = Lab(broker, tmp_path)
            stack.callback(lab.close)
            return lab

        yield make
