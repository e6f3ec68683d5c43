"""The reconciler, model-checked: `plan_policy` (and `plan_cleanup`) driven against an in-memory
cluster where writes fail (409, 429, 5xx) or land late, and breakers, endpoints, pods, nodes,
admins, the policy and the operator itself do anything in between.

The promises, checked after every step: the plan made with each policy's `PlanMemo` (kept across
the passes, as the loop keeps it) is the plan made without one; never past a cap (unready pods,
cordoned nodes) by an action of ours; no new action while a shared outage is suspected; no write
to a node, taint or condition that is not ours; and once every breaker is closed and the cool-
down has passed, the cluster is back to the admin's state within a few reconciliations (the
marks of a release made then go one window later, when no trip is left for them to forgive).

``HYPOTHESIS_PROFILE=nightly`` explores many more paths.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from circuitgate_operator.clock import rfc3339
from circuitgate_operator.contract import TRIPPED_STATES, BreakerState, Reading
from circuitgate_operator.decide.caps import resolve_cap, storm_reached
from circuitgate_operator.decide.cleanup import plan_cleanup
from circuitgate_operator.decide.intents import (
    CircuitStateDelete,
    CircuitStateWrite,
    ConditionWrite,
    Eviction,
    NodeChange,
    Plan,
)
from circuitgate_operator.decide.ledger import TripLedger
from circuitgate_operator.decide.memo import PlanMemo
from circuitgate_operator.decide.nodes import CORDONED_BY, RELEASE_MARKS, RELEASED_BY, TAINTED
from circuitgate_operator.decide.observation import PolicyObservation
from circuitgate_operator.decide.plan import plan_policy
from circuitgate_operator.decide.readiness import OUR_UNREADY_REASONS
from circuitgate_operator.model import (
    EXCLUDE_LABEL,
    CircuitStateView,
    NodeView,
    PodView,
    PolicyView,
    Taint,
    parse_policy,
)
from circuitgate_operator.names import CONDITION_TYPE
from tests.profiles import PROFILE, property_settings

NS = "ns"
START = 1_800_000_000.0
NODES = ("n0", "n1", "n2")
PODS = ("w0", "w1", "w2", "w3", "w4")
OUR_TAINT = Taint("circuitgate.io/tripped", "", "NoSchedule")
ADMIN_TAINT = Taint("admin/maintenance", "", "NoExecute", "2027-01-01T00:00:00Z")
OUR_ANNOTATIONS = (
    CORDONED_BY,
    TAINTED,
    "circuitgate.io/cordoned-at",
    "circuitgate.io/cordon-reason",
    *RELEASE_MARKS,
)
COOLDOWN, WINDOW = 60.0, 120.0
CAPS = st.sampled_from([0, 1, 2, 3, "25%", "50%", "100%"])
STORMS = st.sampled_from([2, 3, 5, "50%", "80%", "100%"])
OUTCOMES = st.sampled_from(["ok", "ok", "ok", "conflict", "refused", "late"])

steps = 0  # reconciliations explored, for the report
landed: dict[str, int] = {}  # writes that landed, by kind: the model reaches what matters
memo_entries = 0  # per-pod decisions the memos offered: the equivalence is not vacuous


# Two policies of the namespace, each selecting pods by their app label (a relabelled pod moves
# between them), both allowed to cordon: nodes and caps are shared.
POLICIES = {"pol": "worker", "web": "web"}


def policy_body(name: str, uid: str, safety: dict[str, Any], paused: bool) -> PolicyView:
    return parse_policy(
        {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": uid,
                "generation": 1,
                "annotations": {"circuitgate.io/paused": "true"} if paused else {},
            },
            "spec": {
                "selector": {"matchLabels": {"app": POLICIES[name]}},
                "endpoint": {"port": 8000},
                "nodeRemediation": {
                    "enabled": True,
                    "tripThreshold": 2,
                    "minDistinctPods": 1,
                    "windowSeconds": WINDOW,
                    "cooldownSeconds": COOLDOWN,
                    "evictTrippedPods": True,
                },
                "safety": safety,
            },
        }
    )


class ReconcilerModel(RuleBasedStateMachine):
    """One namespace, two policies (each re-created after a deletion), three nodes, five
    pods."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.generation = 0
        self.nodes = {n: NodeView(name=n, uid=f"u-{n}", resource_version="1") for n in NODES}
        self.pods: dict[str, PodView] = {}
        self.breakers: dict[str, str] = {}  # pod uid: state
        self.opened: dict[str, float] = {}
        self.states: dict[str, CircuitStateView] = {}
        self.safety: dict[str, Any] = {"maxUnreadyPods": 1, "maxCordonedNodes": 1}
        self.paused = False
        self.policies: dict[str, PolicyView] = {name: self._policy(name) for name in POLICIES}
        self.deleted: dict[str, PolicyView] = {}
        self.ledgers: dict[str, TripLedger] = {name: TripLedger() for name in POLICIES}
        self.late: list[Any] = []
        self.memos: dict[str, PlanMemo] = {}
        for i, name in enumerate(PODS):
            self._new_pod(name, NODES[i % len(NODES)])

    # -- the world ----------------------------------------------------------------------------

    def _policy(self, name: str) -> PolicyView:
        self.generation += 1
        return policy_body(name, f"uid-{self.generation}", dict(self.safety), self.paused)

    def _new_pod(self, name: str, node: str, labels: dict[str, str] | None = None) -> None:
        self.generation += 1
        uid = f"{name}-{self.generation}"
        self.pods[name] = PodView(
            namespace=NS,
            name=name,
            uid=uid,
            labels=labels or {"app": "worker"},
            node_name=node,
            pod_ip=f"10.0.{self.generation % 250}.{PODS.index(name) + 1}",
            phase="Running",
            readiness_gates=(CONDITION_TYPE,),
        )
        self.breakers[uid] = BreakerState.CLOSED

    def _delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        self.breakers.pop(pod.uid, None)
        state = self.states.get(name)
        if state is not None and state.owner_uid == pod.uid:
            del self.states[name]  # the garbage collector, as owner references ask

    def _node(self, name: str, **change: Any) -> None:
        node = self.nodes[name]
        version = str(int(node.resource_version) + 1)
        self.nodes[name] = dataclasses.replace(node, resource_version=version, **change)

    def _reading(self, pod: PodView) -> Reading:
        url = f"http://{pod.pod_ip}:8000/circuit"
        state = self.breakers[pod.uid]
        if state == BreakerState.UNKNOWN:
            return Reading(url=url, state=BreakerState.UNKNOWN, reachable=False, reason="refused")
        opened = self.opened.get(pod.uid)
        tripped = state in TRIPPED_STATES and opened is not None
        return Reading(
            url=url,
            state=BreakerState(state),
            reachable=True,
            breaker="default",
            opened_at=rfc3339(opened, precise=True) if tripped and opened else None,
            # An open period of a minute: once it is over, what is recorded is no evidence.
            may_close_at=rfc3339(opened + 60, precise=True)
            if state == BreakerState.OPEN and opened
            else None,
        )

    def _matched(self, policy: PolicyView) -> list[PodView]:
        return [p for p in self.pods.values() if policy.spec.selector.matches(p.labels)]

    def _ours_unready(self, pods: list[PodView]) -> int:
        return sum(
            1
            for p in pods
            if (c := p.gate_condition) is not None
            and c.status == "False"
            and c.reason in OUR_UNREADY_REASONS
        )

    # -- applying a plan, as the API server would ---------------------------------------------

    def _apply(self, plan: Plan, data: st.DataObject, name: str, *, reliable: bool = False) -> int:
        """Apply each write, or fail it, or keep it to land later; return the failures."""
        failures = 0
        writes: list[Any] = [
            *plan.conditions,
            *plan.circuit_states,
            *plan.circuit_state_deletes,
            *plan.nodes,
            *plan.evictions,
        ]
        for write in writes:
            outcome = "ok" if reliable else data.draw(OUTCOMES, label="outcome")
            if outcome == "ok":
                failures += not self._land(write)
            elif outcome == "late":
                self.late.append(write)
                failures += 1  # no answer in time: the operator counts it as failed
            else:
                failures += 1
        policy = self.policies.get(name)
        if plan.policy_status is not None and policy is not None:
            self.policies[name] = dataclasses.replace(policy, status=plan.policy_status.status)
        return failures

    def _land(self, write: Any) -> bool:
        """One write reaching the API server; False for a refusal (404, 409)."""
        kind = getattr(write, "action", type(write).__name__)
        landed[kind] = landed.get(kind, 0) + 1
        if isinstance(write, ConditionWrite):
            pod = self.pods.get(write.pod)
            if pod is None:
                return False
            current = pod.gate_condition
            assert not (
                current is not None
                and current.status == "False"
                and current.reason not in OUR_UNREADY_REASONS
            ), f"wrote over a condition that is not ours: {current}"
            conditions = {**pod.conditions, CONDITION_TYPE: write.condition}
            self.pods[write.pod] = dataclasses.replace(pod, conditions=conditions)
        elif isinstance(write, CircuitStateWrite):
            self.states[write.name] = CircuitStateView(
                NS, write.name, write.policy, write.pod_uid, dict(write.status)
            )
        elif isinstance(write, CircuitStateDelete):
            self.states.pop(write.name, None)
        elif isinstance(write, NodeChange):
            return self._land_node(write)
        elif isinstance(write, Eviction):
            pod = self.pods.get(write.pod)
            if pod is None or pod.uid != write.uid:
                return False
            self._delete_pod(write.pod)
            elsewhere = NODES[(NODES.index(write.node) + 1) % len(NODES)]
            self._new_pod(write.pod, elsewhere, dict(pod.labels))  # its replacement
        return True

    def _land_node(self, change: NodeChange) -> bool:
        node = self.nodes[change.node]
        if change.resource_version and change.resource_version != node.resource_version:
            return False  # 409: the compare-and-set protects whatever changed since
        owner = node.annotations.get(CORDONED_BY)
        if change.action == "cordon":
            assert owner is None and not node.unschedulable and not node.excluded, (
                f"cordoned a node that is not ours to cordon: {node}"
            )
        elif change.action == "forget":
            assert owner is None and node.annotations.get(RELEASED_BY), (
                f"forgot a release that is not ours: {node}"
            )
            assert change.unschedulable is None and change.taints is None
            assert set(change.annotations) <= set(RELEASE_MARKS), f"forgot more: {change}"
        else:
            assert owner is not None, f"undid a cordon that is not ours: {node}"
        if change.taints is not None:
            theirs = {t for t in node.taints if str(t) != node.annotations.get(TAINTED)}
            assert theirs <= set(change.taints), f"lost an admin taint: {node} -> {change}"
        annotations = dict(node.annotations)
        for key, value in change.annotations.items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        fields: dict[str, Any] = {"annotations": annotations}
        if change.unschedulable is not None:
            fields["unschedulable"] = change.unschedulable
        if change.taints is not None:
            fields["taints"] = tuple(change.taints)
        self._node(change.node, **fields)
        return True

    # -- the operator -------------------------------------------------------------------------

    def _observe(self, policy: PolicyView) -> PolicyObservation:
        matched = self._matched(policy)
        readings = {p.uid: self._reading(p) for p in matched}
        ledger = self.ledgers[policy.name]
        for pod in matched:
            limit = policy.spec.nodes.trip_threshold
            ledger.observe(pod.node_name, pod.name, readings[pod.uid], self.now, limit=limit)
        elsewhere = {
            p.name
            for other in self.policies.values()
            if other.name != policy.name
            for p in self._matched(other)
        }
        return PolicyObservation(
            policy=policy,
            selected=matched,
            pods=dict(self.pods),
            readings=readings,
            circuit_states=dict(self.states),
            nodes=dict(self.nodes),
            trips=ledger.by_node(max(WINDOW, COOLDOWN), self.now),
            now=self.now,
            watched_elsewhere=frozenset(elsewhere),
        )

    def _reconcile(self, data: st.DataObject, *, reliable: bool = False) -> int:
        """One pass of each policy's loop (or of its cleanup, if it is being deleted)."""
        return sum(self._reconcile_one(data, name, reliable=reliable) for name in POLICIES)

    def _reconcile_one(self, data: st.DataObject, name: str, *, reliable: bool = False) -> int:
        global steps
        steps += 1
        for write in self.late:  # in flight since an earlier pass: it lands before this one
            self._land(write)
        self.late.clear()
        policy = self.policies.get(name)
        if policy is None:
            return self._clean_up(data, name, reliable=reliable) if name in self.deleted else 0
        obs = self._observe(policy)
        plan = plan_policy(obs)
        memo = self.memos.setdefault(name, PlanMemo())
        global memo_entries
        memo_entries += len(memo.circuit_states.entries) + len(memo.readiness.entries)
        assert plan_policy(dataclasses.replace(obs), memo) == plan, "the memo changed the plan"
        self._check_restraint(obs, plan)
        unready_before = self._ours_unready(obs.matched)
        cordoned_before = self._cordoned_among(obs)
        failures = self._apply(plan, data, name, reliable=reliable)
        self._check_caps(obs, unready_before, cordoned_before)
        return failures

    def _clean_up(self, data: st.DataObject, name: str, *, reliable: bool) -> int:
        deleted = self.deleted[name]
        plan = plan_cleanup(
            deleted,
            pods=dict(self.pods),
            circuit_states=dict(self.states),
            nodes=dict(self.nodes),
            now=self.now,
            others=self.policies.values(),
        )
        failures = self._apply(plan, data, name, reliable=reliable)
        if failures == 0 and not plan.conditions:
            del self.deleted[name]  # the finalizer lets go
        return failures + (1 if name in self.deleted else 0)

    def _check_restraint(self, obs: PolicyObservation, plan: Plan) -> None:
        tripped = sum(1 for p in obs.matched if obs.readings[p.uid].state in TRIPPED_STATES)
        safety = obs.policy.spec.safety
        storm = storm_reached(safety.storm_threshold, len(obs.matched), tripped)
        if storm or obs.policy.paused:
            acted = [w for w in plan.conditions if w.marks_unready]
            acted += [c for c in plan.nodes if c.action == "cordon"]
            acted += plan.evictions
            assert not acted, f"acted during a storm or a pause: {acted}"

    def _check_caps(
        self, obs: PolicyObservation, unready_before: int, cordoned_before: int
    ) -> None:
        """Past a cap only if it was already past before (pods moved away), never by us."""
        safety = obs.policy.spec.safety
        matched = self._matched(obs.policy)
        unready = self._ours_unready(matched)
        cap = resolve_cap(safety.max_unready_pods, len(obs.matched))
        assert unready <= max(cap, unready_before), f"{unready} unready past the cap {cap}"
        cordoned = self._cordoned_among(obs)
        total = len({p.node_name for p in obs.matched})
        cap = resolve_cap(safety.max_cordoned_nodes, total)
        assert cordoned <= max(cap, cordoned_before), f"{cordoned} cordoned past the cap {cap}"

    def _cordoned_among(self, obs: PolicyObservation) -> int:
        """Nodes cordoned by any policy among those the policy's pods run on, plus those it
        holds elsewhere: the count its cap bounds (across policies)."""
        ran_on = {p.node_name for p in obs.matched}
        return sum(
            1
            for n in self.nodes.values()
            if n.unschedulable
            and (owner := n.annotations.get(CORDONED_BY))
            and (owner == obs.policy.key or n.name in ran_on)
        )

    # -- rules: what can happen ---------------------------------------------------------------

    @rule(data=st.data())
    def reconcile(self, data: st.DataObject) -> None:
        self._reconcile(data)

    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0, 90.0, 600.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(pod=st.sampled_from(PODS), state=st.sampled_from(list(BreakerState)))
    def breaker_changes(self, pod: str, state: BreakerState) -> None:
        found = self.pods.get(pod)
        if found is None:
            return
        if state in TRIPPED_STATES and self.breakers[found.uid] not in TRIPPED_STATES:
            self.opened[found.uid] = self.now
        self.breakers[found.uid] = state

    @rule(pod=st.sampled_from(PODS), data=st.data())
    def breaker_trips_and_is_read(self, pod: str, data: st.DataObject) -> None:
        """A new opening (a new openedAt), seen by the next reconciliation: the usual path."""
        found = self.pods.get(pod)
        if found is not None:
            self.now += 1
            self.opened[found.uid] = self.now
            self.breakers[found.uid] = BreakerState.OPEN
            self._reconcile(data)

    @rule(pod=st.sampled_from(PODS), node=st.sampled_from(NODES))
    def pod_moves(self, pod: str, node: str) -> None:
        """Deleted and made again elsewhere (a Deployment's replacement, same name here)."""
        if pod in self.pods:
            labels = dict(self.pods[pod].labels)
            self._delete_pod(pod)
            self._new_pod(pod, node, labels)

    @rule(pod=st.sampled_from(PODS), selected=st.booleans())
    def pod_relabelled(self, pod: str, selected: bool) -> None:
        if pod in self.pods:
            labels = {"app": "worker" if selected else "web"}
            self.pods[pod] = dataclasses.replace(self.pods[pod], labels=labels)

    @rule(pod=st.sampled_from(PODS))
    def pod_deleted_or_back(self, pod: str) -> None:
        if pod in self.pods:
            self._delete_pod(pod)
        else:
            self._new_pod(pod, NODES[PODS.index(pod) % len(NODES)])

    @rule(node=st.sampled_from(NODES), what=st.sampled_from(["cordon", "uncordon", "drain"]))
    def admin_cordons(self, node: str, what: str) -> None:
        """kubectl cordon/uncordon/drain: spec.unschedulable only (annotations stay)."""
        current = self.nodes[node]
        if what == "uncordon":
            self._node(node, unschedulable=False)
        elif not current.unschedulable:
            self._node(node, unschedulable=True)
        if what == "drain":
            for name in [p.name for p in self.pods.values() if p.node_name == node]:
                self.pod_moves(name, NODES[(NODES.index(node) + 1) % len(NODES)])

    @rule(node=st.sampled_from(NODES), excluded=st.booleans())
    def admin_excludes(self, node: str, excluded: bool) -> None:
        labels = {EXCLUDE_LABEL: "true"} if excluded else {}
        self._node(node, labels=labels)

    @rule(node=st.sampled_from(NODES))
    def admin_taints(self, node: str) -> None:
        current = self.nodes[node]
        if ADMIN_TAINT not in current.taints:
            self._node(node, taints=(*current.taints, ADMIN_TAINT))

    @rule(paused=st.sampled_from([False, False, True]), unready=CAPS, cordoned=CAPS, storm=STORMS)
    def policy_edited(self, paused: bool, unready: Any, cordoned: Any, storm: Any) -> None:
        """Both policies take the same edit (one spec to shrink, two loops to race)."""
        self.paused = paused
        self.safety = {
            "maxUnreadyPods": unready,
            "maxCordonedNodes": cordoned,
            "stormThreshold": storm,
        }
        for name, policy in self.policies.items():
            fresh = policy_body(name, policy.uid, dict(self.safety), paused)
            self.policies[name] = dataclasses.replace(fresh, status=policy.status)

    @rule(name=st.sampled_from(list(POLICIES)))
    def policy_deleted_or_created(self, name: str) -> None:
        """Deleted (its cleanup runs behind the finalizer), or made again once it is gone."""
        if name in self.policies:
            self.deleted[name] = self.policies.pop(name)
            self.ledgers[name] = TripLedger()
        elif name not in self.deleted:
            self.policies[name] = self._policy(name)

    @rule(in_flight=st.booleans())
    def operator_restarts(self, in_flight: bool) -> None:
        """A restart or a second replica taking over: edge-triggered memory is gone, and what
        the old one had in flight may land or not."""
        self.ledgers = {name: TripLedger() for name in POLICIES}
        if not in_flight:
            self.late.clear()

    # -- the promises -------------------------------------------------------------------------

    @invariant()
    def only_our_marks_on_nodes_we_own(self) -> None:
        for node in self.nodes.values():
            if OUR_TAINT in node.taints or node.annotations.get(TAINTED):
                assert node.annotations.get(CORDONED_BY), f"our taint without our mark: {node}"

    @rule(data=st.data())
    def everything_recovers(self, data: st.DataObject) -> None:
        """Every breaker closes and is readable, the cool-down passes: a few reliable passes
        bring the cluster back to the admin's state."""
        for uid in self.breakers:
            self.breakers[uid] = BreakerState.CLOSED
        self.now += COOLDOWN + WINDOW + 1
        if self.paused:
            self.policy_edited(False, *self._current_safety())
        for _ in range(6):
            self._reconcile(data, reliable=True)
            self.now += 1
        # The marks of a release made just now forgive its trips for one more window.
        self.now += WINDOW
        for _ in range(2):
            self._reconcile(data, reliable=True)
            self.now += 1
        assert not self.deleted, f"the cleanup of {sorted(self.deleted)} never finished"
        for pod in self.pods.values():
            condition = pod.gate_condition
            assert not (
                condition is not None
                and condition.status == "False"
                and condition.reason in OUR_UNREADY_REASONS
            ), f"still unready: {pod}"
        for node in self.nodes.values():
            ours = [a for a in OUR_ANNOTATIONS if a in node.annotations]
            assert not ours, f"our marks left on {node}"
            assert OUR_TAINT not in node.taints, f"our taint left on {node}"
        admin = [n for n in self.nodes.values() if n.unschedulable]
        for node in admin:
            assert CORDONED_BY not in node.annotations

    def _current_safety(self) -> tuple[Any, Any, Any]:
        s = self.safety
        return (
            s.get("maxUnreadyPods", 1),
            s.get("maxCordonedNodes", 1),
            s.get("stormThreshold", "50%"),
        )


ReconcilerModel.TestCase.settings = property_settings(quick=300, nightly=2000, steps=(50, 80))
TestReconcilerModel = ReconcilerModel.TestCase


def teardown_module() -> None:
    print(f"\nreconciler model: {steps} reconciliations explored ({PROFILE} profile)")
    print(f"writes landed: {dict(sorted(landed.items()))}")
    print(f"per-pod decisions offered from the memo: {memo_entries}")
