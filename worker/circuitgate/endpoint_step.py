"""Worker bootstep: serve the breaker endpoint from the main process while the worker runs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import bootsteps, signals

from .breaker_set import BreakerSet
from .broker_check import BrokerCheck, Liveness, connect_as_the_consumer
from .consumer_pulse import ConsumerPulse
from .endpoint import BreakerEndpoint
from .metrics import render_metrics
from .report import describe_worker
from .settings import load_settings

__all__ = ("EndpointStep", "serve_breakers")

logger = logging.getLogger(__name__)


def serve_breakers(
    breakers: BreakerSet,
    hostname: str,
    queues: Sequence[str],
    pulse: ConsumerPulse | None = None,
    broker: BrokerCheck | None = None,
    **options: Any,
) -> BreakerEndpoint:
    """An endpoint that describes ``breakers`` and, given its ``pulse``, the consumer: the
    document, its change counter, the metrics, readiness and liveness (which a ``broker``
    that does not answer keeps: a loop held by a hung broker is not the worker's fault)."""
    members = list(breakers)
    if pulse is None:
        return BreakerEndpoint(
            document=lambda: describe_worker(hostname, breakers, queues),
            sequence=breakers.sequence,
            metrics=render_metrics(lambda: members),
            **options,
        )
    return BreakerEndpoint(
        document=lambda: describe_worker(hostname, breakers, queues, pulse),
        sequence=lambda: breakers.sequence() + pulse.changes(),
        metrics=render_metrics(lambda: members, pulse),
        live=pulse.live if broker is None else Liveness(pulse, broker),
        **options,
    )


class EndpointStep(bootsteps.StartStopStep):
    """Starts the endpoint after the pool, so no pool child ever serves it, and closes it when
    the worker is done: in a warm shutdown, once the pool's tasks are (``worker_shutdown``),
    so ``/readyz`` says ``consumer_stopping`` and ``/healthz`` 200 while they finish.

    Not a health check of the tasks: ``/healthz`` says the consumer's loop is alive, whatever
    the breaker says; ``/readyz`` says whether the worker takes work (no open circuit, a
    consumer connected and not stalled); ``/circuit`` says all of it. Sets
    ``worker.consumer_pulse``, which the consumer's `ConsumerWatch` step stamps.
    """

    name = "circuitgate.endpoint"
    requires = ("circuitgate.breaker_step:BreakerStep", "celery.worker.components:Pool")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.settings = load_settings(parent.app.conf)
        self.endpoint: BreakerEndpoint | None = None
        self.broker: BrokerCheck | None = None
        self.hostname: str = parent.hostname
        # Stamped by the consumer's `ConsumerWatch` step, judged here.
        parent.consumer_pulse = self.pulse = (
            ConsumerPulse(
                stall_seconds=self.settings.stall_seconds,
                liveness_seconds=self.settings.liveness_seconds,
            )
            if self.include_if(parent)
            else None
        )

    def include_if(self, parent: Any) -> bool:
        return self.settings.endpoint_enabled and parent.circuit_breakers is not None

    def start(self, parent: Any) -> None:
        queues = sorted(parent.app.amqp.queues.consume_from or parent.app.amqp.queues)
        if self.pulse is not None:
            self.broker = BrokerCheck(connect_as_the_consumer(parent.app), self.pulse.looks_stuck)
            self.broker.start()
        self.endpoint = serve_breakers(
            parent.circuit_breakers,
            parent.hostname,
            queues,
            parent.consumer_pulse,
            self.broker,
            host=self.settings.endpoint_host,
            port=self.settings.endpoint_port,
            max_connections=self.settings.endpoint_max_connections,
            max_wait=self.settings.endpoint_max_wait,
        )
        self.endpoint.start()
        host, port = self.endpoint.address
        logger.info("circuitgate: endpoint on http://%s:%d/circuit", host, port)
        signals.worker_shutting_down.connect(self._shutting_down, weak=False)
        signals.worker_shutdown.connect(self._shut_down, sender=parent, weak=False)

    def stop(self, parent: Any) -> None:
        """Warm shutdown, before the pool drains: no more work taken, the endpoint stays."""
        if self.pulse is not None:
            self.pulse.stopping()

    def terminate(self, parent: Any) -> None:
        """Cold shutdown: the tasks are cut short, nothing is left to report."""
        self._close()

    def _shutting_down(self, sender: str, **_: Any) -> None:
        if sender == self.hostname and self.pulse is not None:
            self.pulse.stopping()  # in Celery's signal handler, before the consumer stops

    def _shut_down(self, **_: Any) -> None:
        self._close()

    def _close(self) -> None:
        signals.worker_shutting_down.disconnect(self._shutting_down)
        signals.worker_shutdown.disconnect(self._shut_down)
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
