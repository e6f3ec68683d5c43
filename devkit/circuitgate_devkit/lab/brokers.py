"""Start a real broker on a free loopback port: moto's SQS server or redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import TimedOut, eventually

__all__ = (
    "Broker",
    "BrokerUnavailable",
    "rabbitmq_broker",
    "redis_broker",
    "sqs_broker",
)


class BrokerUnavailable(RuntimeError):
    """A broker could not be installed or started; the message says why."""


@dataclass
class Broker:
    """How workers and producers reach a running broker."""

    transport: str
    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the broker's processes (SIGSTOP) while the block lasts: connections stay
        open and nothing answers, as with a hung server or a network that drops packets."""
        assert self.process is not None, "this broker was not started here"
        os.killpg(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.process.pid, signal.SIGCONT)

    def celery_config(self) -> dict[str, Any]:
        """The ``app.conf`` keys that point a Celery app at this broker."""
        return {"broker_url": self.url, "broker_transport_options": self.transport_options}


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise BrokerUnavailable(f"{what} exited with code {process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    try:
        eventually(listening, timeout=timeout, interval=0.05, what=f"{what} on port {port}")
    except TimedOut:
        raise BrokerUnavailable(
            f"{what} did not listen on 127.0.0.1:{port} within {timeout}s"
        ) from None


@contextlib.contextmanager
def _process(
    argv: list[str],
    port: int,
    what: str,
    log: str,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    timeout: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            user=user, group=user,
        )  # fmt: skip
    try:
        _wait_for_port(port, process, what, timeout=timeout)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def redis_broker(*, visibility_timeout: float = 3600) -> Iterator[Broker]:
    """A throwaway ``redis-server`` with no persistence.

    ``visibility_timeout`` is how long an unacknowledged message stays with a worker that
    died before another worker restores it (kombu's Redis transport option). Workers look for
    such messages every second: kombu 5.7's default sweep (every 10th of its 10 s ticks) would
    add up to 100 s to every test of a killed worker.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise BrokerUnavailable("redis-server is not installed (make setup installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="circuitgate-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
        with _process(argv, port, "redis-server", os.path.join(tmp, "redis.log")) as process:
            yield Broker(
                process=process,
                transport="redis",
                url=f"redis://127.0.0.1:{port}/0",
                transport_options={
                    "visibility_timeout": visibility_timeout,
                    "unacked_restore_interval": 1,
                    "unacked_restore_throttle": 1,
                },
            )


@contextlib.contextmanager
def redis_sentinel_broker(*, visibility_timeout: float = 3600) -> Iterator[Broker]:
    """A throwaway ``redis-server`` behind one Sentinel (master name ``lab``), reached as
    kombu's ``sentinel://`` transport: the Sentinel names the server, clients then talk to it
    directly."""
    with redis_broker(visibility_timeout=visibility_timeout) as server:
        server_port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="circuitgate-sentinel-") as tmp:
            config = os.path.join(tmp, "sentinel.conf")
            with open(config, "w") as out:
                out.write(
                    f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
                    f"sentinel monitor lab 127.0.0.1 {server_port} 1\n"
                )
            argv = [str(shutil.which("redis-server")), config, "--sentinel"]
            with _process(argv, port, "redis sentinel", os.path.join(tmp, "sentinel.log")):
                yield Broker(
                    process=server.process,
                    transport="redis",
                    url=f"sentinel://127.0.0.1:{port}/0",
                    transport_options={**server.transport_options, "master_name": "lab"},
                )


@contextlib.contextmanager
def sqs_broker(*, visibility_timeout: int = 30) -> Iterator[Broker]:
    """moto's SQS in server mode: a real HTTP SQS endpoint on loopback."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise BrokerUnavailable(f"moto[server] is not installed: {exc}") from exc
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="circuitgate-sqs-") as tmp:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        with _process(argv, port, "moto SQS server", os.path.join(tmp, "moto.log")) as process:
            yield Broker(
                process=process,
                transport="sqs",
                url=f"sqs://lab:lab@127.0.0.1:{port}",
                transport_options={
                    "region": "us-east-1",
                    "is_secure": False,
                    "visibility_timeout": visibility_timeout,
                    "wait_time_seconds": 1,
                    "polling_interval": 0.1,
                },
            )


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


@contextlib.contextmanager
def rabbitmq_broker() -> Iterator[Broker]:
    """A throwaway ``rabbitmq-server`` node on loopback, with its own epmd.

    Debian's script switches to the ``rabbitmq`` user, so as root the node runs as that user
    in a folder it owns; everything (data, logs, cookie, plugins) lives in that folder.
    """
    binary = RABBITMQ_SERVER if os.path.exists(RABBITMQ_SERVER) else shutil.which("rabbitmq-server")
    if binary is None:
        raise BrokerUnavailable("rabbitmq-server is not installed (make setup installs it)")
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    user = "rabbitmq" if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="circuitgate-rabbitmq-") as tmp:
        if user is not None:
            shutil.chown(tmp, user, user)
        node = f"lab{port}@localhost"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": os.path.join(tmp, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(tmp, "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(tmp, "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(tmp, "feature_flags"),
            "RABBITMQ_CONFIG_FILE": os.path.join(tmp, "rabbitmq"),
        }
        try:
            with _process(
                [binary], port, "rabbitmq-server", os.path.join(tmp, "server.log"),
                env=env, user=user, timeout=60,
            ) as process:  # fmt: skip
                yield Broker(
                    transport="amqp", url=f"amqp://guest:guest@127.0.0.1:{port}//", process=process
                )
        finally:
            epmd = shutil.which("epmd")
            if epmd is not None:
                subprocess.run(
                    [epmd, "-kill"], env={**env, "ERL_EPMD_PORT": str(epmd_port)},
                    capture_output=True, check=False, timeout=10,
                )  # fmt: skip
