"""Worker bootstep: read the settings and make the worker's one breaker before the pool forks."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from .breaker_set import BreakerSet
from .guarded_request import guard_outcomes_in_main
from .settings import Settings, load_settings
from .task_guard import guard

__all__ = ("BreakerStep", "is_guarded")

logger = logging.getLogger(__name__)


def is_guarded(task: Any, settings: Settings) -> bool:
    """Per-task opt-in/opt-out: a task's ``circuitgate`` option wins over the default."""
    choice = getattr(task, "circuitgate", None)
    if choice is None:
        return settings.guard_all_tasks and not task.name.startswith("celery.")
    return bool(choice)


class BreakerStep(bootsteps.Step):
    """Creates the breaker shared by the main process and every pool child.

    It runs while the worker is being set up, before the pool starts, so the shared page
    and the guarded tasks are inherited by every child the pool forks, replacements too.
    Invalid settings stop the worker here, before it consumes anything. Sets
    ``worker.circuit_breakers`` (a `BreakerSet`, None when disabled) and
    ``worker.circuit_guarded_tasks``.
    """

    name = "circuitgate.breaker"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = load_settings(parent.app.conf)
        parent.circuit_breakers = None
        parent.circuit_guarded_tasks = frozenset()
        if not settings.enabled:
            logger.info("circuitgate is disabled (circuitgate_enabled=False)")
            return
        breakers = BreakerSet(settings)
        guarded = [task for task in parent.app.tasks.values() if is_guarded(task, settings)]
        for task in guarded:
            guard(task, breakers)
            guard_outcomes_in_main(task, breakers)
        parent.circuit_breakers = breakers
        parent.circuit_guarded_tasks = frozenset(task.name for task in guarded)
        logger.info(
            "circuitgate: breakers %s guard %d task(s) (fail_max=%d, reset_timeout=%ss)",
            ", ".join(breakers.names()),
            len(guarded),
            settings.fail_max,
            settings.reset_timeout,
        )
