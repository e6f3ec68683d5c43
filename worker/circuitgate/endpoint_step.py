"""Worker bootstep: serve the breaker endpoint from the main process while the worker runs."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from .endpoint import BreakerEndpoint
from .metrics import render_metrics
from .report import describe_worker
from .settings import load_settings

__all__ = ("EndpointStep",)

logger = logging.getLogger(__name__)


class EndpointStep(bootsteps.StartStopStep):
    """Starts the endpoint after the pool, so no pool child ever serves it, and stops it last.

    Not a health check of the tasks: ``/healthz`` says the process is alive, whatever the
    breaker says; ``/readyz`` and ``/circuit`` say what the breaker says.
    """

    name = "circuitgate.endpoint"
    requires = ("circuitgate.breaker_step:BreakerStep", "celery.worker.components:Pool")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.settings = load_settings(parent.app.conf)
        self.endpoint: BreakerEndpoint | None = None

    def include_if(self, parent: Any) -> bool:
        return self.settings.endpoint_enabled and parent.circuit_breakers is not None

    def start(self, parent: Any) -> None:
        breakers = parent.circuit_breakers
        queues = sorted(parent.app.amqp.queues.consume_from or parent.app.amqp.queues)
        self.endpoint = BreakerEndpoint(
            document=lambda: describe_worker(parent.hostname, breakers, queues),
            sequence=lambda: sum(breaker.shared.version() for breaker in breakers),
            metrics=render_metrics(lambda: list(breakers)),
            host=self.settings.endpoint_host,
            port=self.settings.endpoint_port,
            max_connections=self.settings.endpoint_max_connections,
            max_wait=self.settings.endpoint_max_wait,
        )
        self.endpoint.start()
        host, port = self.endpoint.address
        logger.info("circuitgate: endpoint on http://%s:%d/circuit", host, port)

    def stop(self, parent: Any) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
