"""The plan's per-pod decisions, kept between passes while every input of one is the very object it
was: of ten thousand watched pods, a pass after one trip plans that pod again and looks the
others up.

Only decisions that changed nothing are kept (no write, no Event), and only those that the clock
cannot change, so a plan made with the memo is the plan made without it (a property test checks
this on random cluster states). Inputs are compared as a tuple, so by identity first (the view
keeps an object until the API server sends a new one, and a watcher keeps a Reading until the
next differs) and by value when not the same object. A policy whose spec, name or label changed
plans every pod again, and the reconcile loop empties the memo on a periodic pass every
``FULL_PASS_SECONDS``, so a plan made without it still runs now and then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .intents import Plan

__all__ = ("PlanMemo",)


def _size(plan: Plan) -> int:
    return (
        len(plan.circuit_states)
        + len(plan.circuit_state_deletes)
        + len(plan.conditions)
        + len(plan.nodes)
        + len(plan.evictions)
        + len(plan.events)
    )


@dataclass
class _Step:
    """One per-pod step's kept decisions, by pod uid: (inputs, result)."""

    entries: dict[str, tuple[tuple[object, ...], Any]] = field(default_factory=dict)
    _next: dict[str, tuple[tuple[object, ...], Any]] = field(default_factory=dict)

    def decide(
        self,
        plan: Plan,
        uid: str,
        inputs: tuple[object, ...],
        keep: Callable[[tuple[object, ...], Any], bool],
        step: Callable[..., Any],
        *args: object,
    ) -> Any:
        """The result of ``step(*args)``: kept from an earlier pass when every input is the
        same object, else run (and kept if it added nothing to the plan and ``keep(inputs,
        result)`` says so)."""
        entry = self.entries.get(uid)
        if entry is not None and entry[0] == inputs:  # each the same object, or else equal
            self._next[uid] = entry
            return entry[1]
        before = _size(plan)
        result = step(*args)
        if _size(plan) == before and keep(inputs, result):
            self._next[uid] = (inputs, result)
        return result

    def finish(self) -> None:
        """End of a pass: keep only what this pass used, so pods gone are forgotten."""
        self.entries, self._next = self._next, {}


@dataclass
class PlanMemo:
    """Kept decisions of one policy's passes: CircuitState statuses and readiness."""

    policy: tuple[object, ...] | None = None
    circuit_states: _Step = field(default_factory=_Step)
    readiness: _Step = field(default_factory=_Step)

    def under(self, policy: tuple[object, ...]) -> None:
        """Forget everything decided under another policy (compared by value)."""
        if policy != self.policy:
            self.clear()
            self.policy = policy

    def clear(self) -> None:
        self.circuit_states, self.readiness = _Step(), _Step()

    def finish(self) -> None:
        self.circuit_states.finish()
        self.readiness.finish()
