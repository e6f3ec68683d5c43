"""One policy's reconciliation as a pure function: what the cluster shows now in, a Plan out.

Nothing here remembers earlier decisions; the Plan is recomputed from the observed objects every
time, so after an outage, a pause or a restart nothing stale is replayed. A `PlanMemo` only
saves work: a pod whose inputs are the objects they were is not planned again, and the Plan
is the same with it or without it. Each part of the Plan
is planned by its own module as if nothing held it back; `restraint` then takes out, once,
what the pause, a storm, the caps or a dry run hold back, and the status reports the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..contract import TRIPPED_STATES
from ..model import PodView
from .caps import storm_reached
from .circuit_state import plan_circuit_states, plan_orphans
from .intents import Plan
from .memo import PlanMemo
from .observation import PolicyObservation
from .outliers import Deviation, Verdict, find_deviations, is_outlier, verdict_of
from .policy_status import plan_policy_status
from .readiness import plan_overlaps, plan_readiness, unready_cap
from .remediation import cordon_cap, plan_remediation
from .restraint import Restraints, restrain

__all__ = ("plan_policy",)


def _tripped(
    obs: PolicyObservation, matched: Sequence[PodView], states: Mapping[str, Mapping[str, Any]]
) -> tuple[int, int]:
    """Watched pods whose circuit is tripped, by their reading first: a pod whose CircuitState
    is being replaced (left by an earlier pod of its name) has none this pass, and must still
    count towards a storm (found by the model check); and those tripped or outliers to mark,
    which is what a storm counts (many workers at once is a shared cause either way)."""
    tripped = marked = 0
    for pod in matched:
        reading = obs.reading(pod)
        status = states.get(pod.name, {})
        state = reading.state if reading is not None else status.get("state")
        tripped += state in TRIPPED_STATES
        marked += state in TRIPPED_STATES or is_outlier(status)
    return tripped, marked


def _deviations(
    obs: PolicyObservation, matched: Sequence[PodView]
) -> dict[str, tuple[Deviation, ...]]:
    """How each watched pod (by uid) deviates from its peers now, if the policy asks. A pod
    left out keeps what was recorded of it: one that could not be judged while some of the
    policy's endpoints are being read for the first time (after a restart they answer one by
    one, and a verdict made on the first few would be undone by the rest)."""
    if not obs.policy.spec.outliers.enabled:
        return {}
    evidence = {}
    for pod in matched:
        reading = obs.reading(pod)
        if reading is not None and reading.reachable:
            evidence[pod.uid] = reading.evidence
    judged = find_deviations(evidence, obs.policy.spec.outliers)
    if any(pod.uid in obs.first_read_pending for pod in matched):
        return judged
    return {uid: judged.get(uid, ()) for uid in evidence}


def plan_policy(obs: PolicyObservation, memo: PlanMemo | None = None) -> Plan:
    """Decide every change for one policy: CircuitStates, readiness, nodes, status, Events."""
    policy, spec = obs.policy, obs.policy.spec
    matched = obs.matched
    plan = Plan()
    if memo is not None:
        memo.under((policy.name, policy.label, spec))
    states = plan_circuit_states(plan, obs, matched, memo, _deviations(obs, matched))
    plan_orphans(plan, obs, matched)
    plan_readiness(plan, obs, matched, states, memo)
    if memo is not None:
        memo.finish()
    plan_remediation(plan, obs, matched)
    plan_overlaps(plan, obs)

    tripped, acting_on = _tripped(obs, matched, states)
    storm = storm_reached(spec.safety.storm_threshold, len(matched), acting_on)
    unready, cordoned = unready_cap(obs, matched), cordon_cap(obs, matched)
    restraints = Restraints(policy.paused, spec.dry_run, storm, unready, cordoned)
    capped = restrain(plan, restraints)

    unready_after = {
        pod.name
        for pod in matched
        if pod.gate_condition is not None and pod.gate_condition.status == "False"
    }
    for write in plan.conditions:
        if write.marks_unready:
            unready_after.add(write.pod)
        else:
            unready_after.discard(write.pod)
    cordoned_after = cordoned.held + sum(
        {"cordon": 1, "uncordon": -1}.get(change.action, 0) for change in plan.nodes
    )
    plan_policy_status(
        plan,
        obs,
        matched=len(matched),
        tripped=tripped,
        outliers=sum(verdict_of(status) == Verdict.OUTLIER for status in states.values()),
        unready=len(unready_after),
        cordoned=cordoned_after,
        storm=storm,
        capped=capped,
    )
    return plan
