"""What holds planned actions back, applied once as a pass over the whole Plan.

In order: the pause annotation (no new action at all; only letting go of a node someone else
took over), then a suspected shared outage and the
safety caps (no new unready mark, eviction or cordon past them: an eviction of a pod still
ready takes a slot of the unready-pods cap, after the marks), then a dry run (what is left is only
described, in Events). A first True on a pod that has no condition yet is never held back: it
changes nothing a Service sees, and without it the gate would keep the pod unready for ever.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..model import Condition
from ..names import CONDITION_TYPE
from .caps import Cap
from .intents import Action, Cause, ConditionWrite, EventIntent, Plan

__all__ = ("Restraints", "restrain")

PAUSED = ("Paused", "actions are paused by the circuitgate.io/paused annotation")
STORM = (
    "SuspectedSharedOutage",
    "the circuit is open, but so are too many others (suspected shared outage)",
)
CAPPED = ("SafetyCapReached", "the circuit is open, but the unready-pods cap is reached")


class _Intended(Protocol):
    """A planned write: a condition, a node change or an eviction."""

    @property
    def action(self) -> Action: ...

    @property
    def events(self) -> tuple[EventIntent, ...]: ...


W = TypeVar("W", bound=_Intended)


@dataclass(frozen=True)
class Restraints:
    """What may hold this reconciliation's actions back."""

    paused: bool
    dry_run: bool
    storm: bool
    unready: Cap
    cordoned: Cap


def restrain(plan: Plan, restraints: Restraints) -> bool:
    """Take out of the plan what must not happen now, counted in ``plan.suppressed``; return
    whether a cap held something back."""
    capped = False
    if restraints.paused:
        _hold_conditions(plan, [w for w in plan.conditions if not w.first_true], "paused", PAUSED)
        # Letting go of a node someone else took over is not held: the evidence (a drain's
        # evicted pods) goes with the pods, and after the pause the cool-down would uncordon it.
        held_nodes = [n for n in plan.nodes if n.action != "release"]
        plan.nodes = _drop(plan, plan.nodes, held_nodes, "paused")
        plan.evictions = _drop(plan, plan.evictions, plan.evictions, "paused")
    else:
        marks = [w for w in plan.conditions if w.marks_unready]
        cordons = [c for c in plan.nodes if c.action == "cordon"]
        if restraints.storm:
            _hold_conditions(plan, marks, "storm", STORM)
            plan.nodes = _drop(plan, plan.nodes, cordons, "storm")
            plan.evictions = _drop(plan, plan.evictions, plan.evictions, "storm")
        else:
            allowed, held_marks = restraints.unready.split(marks)
            marked = {w.pod for w in allowed}
            ready = [e for e in plan.evictions if not e.unready and e.pod not in marked]
            after_marks = dataclasses.replace(
                restraints.unready, held=restraints.unready.held + len(allowed)
            )
            _, held_evictions = after_marks.split(ready)
            _, held_cordons = restraints.cordoned.split(cordons)
            _hold_conditions(plan, held_marks, "cap", CAPPED)
            plan.evictions = _drop(plan, plan.evictions, held_evictions, "cap")
            plan.nodes = _drop(plan, plan.nodes, held_cordons, "cap")
            capped = bool(held_marks or held_evictions or held_cordons)
    if restraints.dry_run:
        plan.conditions = _describe(
            plan, plan.conditions, [w for w in plan.conditions if not w.first_true]
        )
        plan.nodes = _describe(plan, plan.nodes, plan.nodes)
        plan.evictions = _describe(plan, plan.evictions, plan.evictions)
    return capped


def _hold_conditions(
    plan: Plan, held: Sequence[ConditionWrite], cause: Cause, why: tuple[str, str]
) -> None:
    """Hold writes back; one on a pod with no condition yet becomes a first True saying why."""
    reason, message = why
    firsts = [
        ConditionWrite(
            w.namespace,
            w.pod,
            Condition(CONDITION_TYPE, "True", reason, message, w.condition.last_transition_time),
            first=True,
        )
        for w in held
        if w.first
    ]
    plan.conditions = _drop(plan, plan.conditions, held, cause) + firsts


def _describe(plan: Plan, items: list[W], held: Sequence[W]) -> list[W]:
    """Items without the held ones, each of those described in Normal Events instead."""
    for item in held:
        verb = item.action.replace("_", " ")
        plan.events.extend(
            EventIntent(e.ref, e.reason, f"dry run: would {verb}: {e.message}") for e in item.events
        )
    return _drop(plan, items, held, "dry_run")


def _drop(plan: Plan, items: list[W], held: Sequence[W], cause: Cause) -> list[W]:
    """Items without the held ones, each of those counted by its action."""
    for item in held:
        plan.suppress(item.action, cause)
    ids = {id(item) for item in held}
    return [item for item in items if id(item) not in ids]
