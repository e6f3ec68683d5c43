"""The plan memo changes no plan: on random cluster states, evolving as the loop sees them (its
writes landing, breakers and endpoints changing, conditions set by others, time passing, first
reads pending, workers deviating from their peers, the policy edited),
``plan_policy(obs, memo)`` with one memo kept across every pass equals ``plan_policy(obs)``
made afresh.

The reconciler model checks the same on its cluster; this one drives what the memo's rules are
about (an open state whose evidence runs out while nothing else changes, a pod never read)
often. ``HYPOTHESIS_PROFILE=nightly`` runs many more examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from circuitgate_devkit.cluster.plan_builders import NOW, node, observe, pod, policy, settle
from circuitgate_operator.clock import rfc3339
from circuitgate_operator.contract import BreakerState, CallEvidence, Reading
from circuitgate_operator.decide.memo import PlanMemo
from circuitgate_operator.decide.plan import plan_policy
from circuitgate_operator.model import Condition, PodView
from circuitgate_operator.names import CONDITION_TYPE
from tests.profiles import property_settings

PODS = ("w0", "w1", "w2", "w3")
STATES = list(BreakerState)


class MemoModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.failures: dict[str, int] = {}  # each worker's failures in its last 100 calls
        self.spec: dict[str, Any] = {"safety": {"maxUnreadyPods": 2, "stormThreshold": 3}}
        pods = [pod(name, node=f"n{i % 2}") for i, name in enumerate(PODS)]
        self.obs = observe(
            policy(**self.spec),
            pods,
            {p.uid: self._reading(p, BreakerState.CLOSED, None) for p in pods},
            nodes=[node("n0"), node("n1")],
        )
        self.memo = PlanMemo()
        self.plans = 0
        self.replaced = 0

    def _reading(self, p: PodView, state: BreakerState, opened: float | None) -> Reading:
        url = f"http://{p.pod_ip}:8000/circuit"
        if state == BreakerState.UNKNOWN:
            return Reading(url=url, state=state, reachable=False, reason="connection refused")
        return Reading(
            url=url,
            state=state,
            reachable=True,
            breaker="default",
            trips=1 if opened is not None else 0,
            opened_at=rfc3339(opened) if opened is not None else None,
            may_close_at=rfc3339(opened + 60) if opened is not None else None,
            sequence=7,
            evidence=(CallEvidence("default", 100, self.failures.get(p.name, 0), 1.0),),
        )

    def _pod(self, name: str) -> PodView:
        return self.obs.pods[name]

    def _replace_pod(self, new: PodView) -> None:
        pods = {**self.obs.pods, new.name: new}
        selected = [pods[p.name] for p in self.obs.selected]
        self.obs = dataclasses.replace(self.obs, pods=pods, selected=selected)

    @invariant()
    def the_memo_changes_no_plan(self) -> None:
        fresh = plan_policy(dataclasses.replace(self.obs, now=self.now))
        kept = plan_policy(dataclasses.replace(self.obs, now=self.now), self.memo)
        assert kept == fresh
        self.plans += 1

    @rule()
    def the_writes_land(self) -> None:
        observed = dataclasses.replace(self.obs, now=self.now)
        self.obs = settle(observed, plan_policy(observed))

    @rule(
        name=st.sampled_from(PODS),
        state=st.sampled_from(STATES),
        opened=st.sampled_from([None, -3600.0, -61.0, -1.0]),
    )
    def the_breaker_changes(self, name: str, state: BreakerState, opened: float | None) -> None:
        p = self._pod(name)
        at = self.now + opened if opened is not None else None
        readings = {**self.obs.readings, p.uid: self._reading(p, state, at)}
        self.obs = dataclasses.replace(self.obs, readings=readings)

    @rule(name=st.sampled_from(PODS), failures=st.sampled_from([0, 5, 40]))
    def its_evidence_changes(self, name: str, failures: int) -> None:
        self.failures[name] = failures
        p = self._pod(name)
        current = self.obs.readings.get(p.uid)
        if current is not None and current.reachable:
            evidence = (CallEvidence("default", 100, failures, 1.0),)
            readings = {**self.obs.readings, p.uid: dataclasses.replace(current, evidence=evidence)}
            self.obs = dataclasses.replace(self.obs, readings=readings)

    @rule(name=st.sampled_from(PODS))
    def an_open_worker_goes_dark(self, name: str) -> None:
        """The usual way an open state outlives its evidence: the breaker opens, its mark
        lands, then the endpoint stops answering and the unknown state lands too."""
        self.the_breaker_changes(name, BreakerState.OPEN, -1.0)
        self.the_writes_land()
        self.the_breaker_changes(name, BreakerState.UNKNOWN, None)
        self.the_writes_land()

    @rule(name=st.sampled_from(PODS), answers=st.booleans())
    def the_pod_is_replaced(self, name: str, answers: bool) -> None:
        """A new pod of the same name, its container just started; one that never answers
        gets a Warning once its startup grace is over."""
        self.replaced += 1
        old = self._pod(name)
        new = pod(name, node=old.node_name, started_at=self.now)
        new = dataclasses.replace(new, uid=f"{new.uid}-{self.replaced}")
        self._replace_pod(new)
        state = BreakerState.CLOSED if answers else BreakerState.UNKNOWN
        readings = {k: v for k, v in self.obs.readings.items() if k != old.uid}
        readings[new.uid] = self._reading(new, state, None)
        self.obs = dataclasses.replace(self.obs, readings=readings)

    @rule(name=st.sampled_from(PODS))
    def the_reading_goes(self, name: str) -> None:
        readings = {k: v for k, v in self.obs.readings.items() if k != self._pod(name).uid}
        self.obs = dataclasses.replace(self.obs, readings=readings)

    @rule(name=st.sampled_from(PODS))
    def someone_empties_its_circuit_state(self, name: str) -> None:
        """The schema requires no field of the status: a hand-edited one may lack the state."""
        state = self.obs.circuit_states.get(name)
        if state is not None:
            edited = dataclasses.replace(state, status={"pod": name})
            states = {**self.obs.circuit_states, name: edited}
            self.obs = dataclasses.replace(self.obs, circuit_states=states)

    @rule(name=st.sampled_from(PODS))
    def its_circuit_state_goes(self, name: str) -> None:
        states = {k: v for k, v in self.obs.circuit_states.items() if k != name}
        self.obs = dataclasses.replace(self.obs, circuit_states=states)

    @rule(
        name=st.sampled_from(PODS),
        value=st.sampled_from([None, ("True", "CircuitClosed"), ("False", "CircuitOpen"),
                               ("False", "SomeoneElse")]),
    )  # fmt: skip
    def someone_sets_the_condition(self, name: str, value: tuple[str, str] | None) -> None:
        p = self._pod(name)
        conditions = {k: v for k, v in p.conditions.items() if k != CONDITION_TYPE}
        if value is not None:
            stamp = rfc3339(self.now)
            conditions[CONDITION_TYPE] = Condition(CONDITION_TYPE, *value, "set by hand", stamp)
        self._replace_pod(dataclasses.replace(p, conditions=conditions))

    @rule(name=st.sampled_from(PODS), gated=st.booleans(), ip=st.sampled_from(["", "10.9.9.9"]))
    def the_pod_changes(self, name: str, gated: bool, ip: str) -> None:
        p = self._pod(name)
        gates = (CONDITION_TYPE,) if gated else ()
        self._replace_pod(dataclasses.replace(p, readiness_gates=gates, pod_ip=ip or p.pod_ip))

    @rule(seconds=st.sampled_from([0.0, 1.0, 30.0, 61.0, 600.0, 3600.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(name=st.sampled_from(PODS), pending=st.booleans())
    def a_first_read_is_pending(self, name: str, pending: bool) -> None:
        uid = self._pod(name).uid
        others = self.obs.first_read_pending - {uid}
        self.obs = dataclasses.replace(
            self.obs, first_read_pending=others | {uid} if pending else others
        )

    @precondition(lambda self: self.plans > 0)
    @rule(enabled=st.booleans(), port=st.sampled_from([8000, 8001]), outliers=st.booleans())
    def the_policy_changes(self, enabled: bool, port: int, outliers: bool) -> None:
        detection = {"enabled": outliers, "minPeers": 2, "sustainSeconds": 30}
        self.spec = {
            **self.spec,
            "readiness": {"enabled": enabled},
            "endpoint": {"port": port},
            "outlierDetection": detection,
        }
        self.obs = dataclasses.replace(self.obs, policy=policy(**self.spec))


MemoModel.TestCase.settings = property_settings(quick=300, nightly=3000, steps=(40, 80))
TestPlanMemo = MemoModel.TestCase
