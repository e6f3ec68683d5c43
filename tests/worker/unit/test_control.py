"""The circuit_* remote-control commands, sent the way an operator sends them.

A real Celery app and its mailbox over kombu's in-memory broker; on the worker side the
pidbox node Celery's own ``Pidbox`` step would make, listening in a thread. Only the
consumer it hands to the commands is a stand-in (its controller, app and hostname).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from celery import Celery
from celery.bin.celery import celery as celery_cli
from celery.utils.collections import AttributeDict
from celery.worker import control as celery_control
from click.testing import CliRunner
from kombu.entity import Queue

import circuitgate.control  # noqa: F401  (registers the commands, as install() does)
from circuitgate.breaker_set import BreakerSet
from circuitgate.contract import load_schema
from circuitgate.report import describe_worker
from circuitgate.settings import load_settings
from circuitgate.shared_state import State

COMMANDS = ("circuit", "circuit_open", "circuit_close", "circuit_reset")


@dataclass
class Worker:
    """One remote-controlled worker: its app, hostname and breakers (None: not enabled)."""

    app: Celery
    hostname: str
    breakers: BreakerSet | None

    def send(self, command: str, **arguments: Any) -> Any:
        """What ``app.control.broadcast`` gets back from this worker."""
        replies = self.app.control.broadcast(
            command, arguments=arguments, destination=[self.hostname], reply=True, timeout=5
        )
        assert len(replies) == 1, replies
        return replies[0][self.hostname]

    def cli(self, *args: str, monkeypatch: pytest.MonkeyPatch) -> Any:
        """``celery -A <app> ARGS --destination <worker> --json``, parsed."""
        module = types.ModuleType("circuitgate_control_test_app")
        module.app = self.app  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        result = CliRunner().invoke(
            celery_cli,
            ["-A", module.__name__, *args, "--destination", self.hostname, "--json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        replies = json.loads(result.output)
        # `inspect` prints {worker: reply}, `control` a list of those.
        (reply,) = replies if isinstance(replies, list) else [replies]
        return reply[self.hostname]

    @property
    def gpu(self) -> Any:
        assert self.breakers is not None
        return self.breakers.get("gpu")

    @property
    def default(self) -> Any:
        assert self.breakers is not None
        return self.breakers.default


def serve(app: Celery, hostname: str, breakers: BreakerSet | None) -> Iterator[Worker]:
    """Answer ``hostname``'s remote-control messages in a thread until the generator ends."""
    consumer = SimpleNamespace(
        controller=SimpleNamespace(circuit_breakers=breakers), app=app, hostname=hostname
    )
    node = app.control.mailbox.Node(
        hostname,
        handlers=celery_control.Panel.data,
        state=AttributeDict(app=app, hostname=hostname, consumer=consumer),
    )
    stopping = threading.Event()
    with app.connection_for_write() as connection:
        node.channel = connection.channel()
        listener = node.listen(channel=node.channel)

        def loop() -> None:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.02)

        thread = threading.Thread(target=loop, name=f"pidbox-{hostname}", daemon=True)
        thread.start()
        try:
            yield Worker(app, hostname, breakers)
        finally:
            stopping.set()
            thread.join(5)
            listener.cancel()


def worker_app() -> Celery:
    app = Celery("circuitgate-control-test", broker="memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.conf.task_queues = [Queue(name) for name in ("cpu", "gpu", "other")]
    app.amqp.queues.select(["gpu", "cpu"])  # celery worker -Q gpu,cpu
    return app


@pytest.fixture
def worker() -> Iterator[Worker]:
    breakers = BreakerSet(
        load_settings(
            {"circuitgate_fail_max": 2, "circuitgate_breakers": {"gpu": {"queues": ["gpu"]}}}
        )
    )
    yield from serve(worker_app(), f"w-{uuid.uuid4().hex[:8]}@host", breakers)


def test_inspect_circuit_answers_the_document_the_endpoint_serves(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker.gpu.open()
    answer = worker.cli("inspect", "circuit", monkeypatch=monkeypatch)
    jsonschema.validate(answer, load_schema())
    assert worker.breakers is not None
    served = describe_worker(worker.hostname, worker.breakers, ["cpu", "gpu"]).to_json()
    assert {**answer, "generated_at": None} == {**served, "generated_at": None}
    by_name = {breaker["name"]: breaker for breaker in answer["breakers"]}
    assert by_name["gpu"]["paused_queues"] == ["gpu"]
    assert by_name["default"]["queues"] == ["cpu"]  # the queues this worker consumes


def test_circuit_open_without_a_name_drains_every_breaker(worker: Worker) -> None:
    answer = worker.send("circuit_open")
    assert answer == {"ok": "circuit default is forced_open, gpu is forced_open"}
    assert not worker.default.fetch_allowed()
    assert not worker.gpu.fetch_allowed()


def test_circuit_open_with_a_name_drains_that_breakers_queues_alone(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = worker.cli("control", "circuit_open", "gpu", monkeypatch=monkeypatch)
    assert answer == {"ok": "circuit gpu is forced_open"}
    assert worker.gpu.snapshot().state is State.FORCED_OPEN
    assert worker.default.snapshot().state is State.CLOSED


def test_circuit_close_holds_a_breaker_closed_through_failures(worker: Worker) -> None:
    worker.gpu.open()
    assert worker.send("circuit_close", breaker="gpu") == {"ok": "circuit gpu is forced_closed"}
    for i in range(5):
        worker.gpu.record_failure(f"t{i}", RuntimeError("device lost"))
    assert worker.gpu.snapshot().state is State.FORCED_CLOSED
    assert worker.gpu.fetch_allowed()


def test_circuit_reset_gives_the_breaker_back_to_the_rules_closed_and_without_history(
    worker: Worker,
) -> None:
    worker.default.record_failure("t0", RuntimeError())
    worker.send("circuit_open", breaker="default")
    assert worker.send("circuit_reset", breaker="default") == {"ok": "circuit default is closed"}
    snapshot = worker.default.snapshot()
    assert (snapshot.state, snapshot.fail_counter) == (State.CLOSED, 0)
    worker.default.record_failure("t1", RuntimeError())
    assert worker.default.snapshot().state is State.CLOSED  # the old failure is forgotten
    worker.default.record_failure("t2", RuntimeError())
    assert worker.default.snapshot().state is State.OPEN  # and the rules apply again


def test_an_unknown_breaker_is_an_error_that_names_the_breakers_and_changes_nothing(
    worker: Worker,
) -> None:
    answer = worker.send("circuit_open", breaker="tpu")
    assert answer == {"error": "no breaker 'tpu'; breakers: default, gpu"}
    assert worker.default.fetch_allowed() and worker.gpu.fetch_allowed()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_worker_without_circuitgate_answers_every_command_with_an_error(command: str) -> None:
    for worker in serve(worker_app(), f"plain-{uuid.uuid4().hex[:8]}@host", None):
        assert worker.send(command) == {"error": "circuitgate is not enabled on this worker"}


def test_the_commands_are_registered_with_celerys_panel_as_documented() -> None:
    meta = celery_control.Panel.meta
    assert meta["circuit"].type == "inspect"
    for command in COMMANDS[1:]:
        assert meta[command].type == "control"
        assert meta[command].signature == "[breaker]"
