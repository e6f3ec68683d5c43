"""The one call that puts circuitgate into a Celery app."""

from __future__ import annotations

from celery import Celery

from . import control  # noqa: F401  (registers the circuit_* remote-control commands)
from .breaker_step import BreakerStep
from .consumer_watch import ConsumerWatch
from .endpoint_step import EndpointStep
from .gate import ConsumptionGate
from .probe_step import ProbeStep

__all__ = ("install",)


def install(app: Celery) -> Celery:
    """Add the shared breaker, the consumption gate, the endpoint and the watch on the
    consumer that the endpoint's readiness and liveness judge by to ``app``'s workers.

    Call it where the app is defined, next to ``app.config_from_object``; settings are
    the ``circuitgate_*`` keys of ``app.conf`` and are checked when a worker starts.
    Producers are unaffected: nothing happens until ``celery worker`` runs.
    """
    app.steps["worker"].add(BreakerStep)
    app.steps["worker"].add(EndpointStep)
    app.steps["consumer"].add(ConsumptionGate)
    app.steps["consumer"].add(ConsumerWatch)
    app.steps["consumer"].add(ProbeStep)
    return app
