"""Outlier detection: the pure judgment of a worker against its peers, and what a policy's plan
does with it (a CircuitState verdict, an unready mark inside the caps, Events)."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from circuitgate_devkit.cluster.plan_builders import NOW, observe, pod, policy, reading, settle
from circuitgate_operator.clock import rfc3339
from circuitgate_operator.contract import CallEvidence
from circuitgate_operator.decide.intents import Plan
from circuitgate_operator.decide.observation import PolicyObservation
from circuitgate_operator.decide.outliers import (
    Deviation,
    Verdict,
    _Peers,
    find_deviations,
    outlier_status,
    sustained_at,
)
from circuitgate_operator.decide.plan import plan_policy
from circuitgate_operator.model import OutlierDetection, PodView, parse_outlier_detection

DETECTION = OutlierDetection(enabled=True, min_peers=3, min_calls=20, sustain=60.0)


def calls(failures: int = 0, p50: float | None = 1.0, n: int = 100, breaker: str = "default"):
    return (CallEvidence(breaker, n, failures, p50),)


def deviating(
    evidence: dict[str, tuple[CallEvidence, ...]], detection: OutlierDetection = DETECTION
) -> dict[str, Deviation]:
    """The workers that deviate, each by its first deviating measure."""
    return {key: found[0] for key, found in find_deviations(evidence, detection).items() if found}


def test_a_worker_failing_30_percent_among_healthy_peers_deviates_by_its_failure_rate() -> None:
    evidence = {f"w{i}": calls(0) for i in range(5)} | {"bad": calls(30)}
    (found,) = deviating(evidence).items()
    key, deviation = found
    assert key == "bad"
    assert (deviation.measure, deviation.value, deviation.peers_median, deviation.peers) == (
        "failureRate",
        0.3,
        0.0,
        5,
    )


def test_a_worker_three_times_slower_deviates_by_its_median_task_time() -> None:
    evidence = {f"w{i}": calls(0, 10.0 + i) for i in range(4)} | {"slow": calls(0, 40.0)}
    deviations = deviating(evidence)
    assert list(deviations) == ["slow"]
    assert deviations["slow"].measure == "p50Seconds"
    assert deviations["slow"].peers_median == 11.5


def test_when_every_worker_fails_together_nobody_is_an_outlier() -> None:
    evidence = {f"w{i}": calls(30 + i) for i in range(6)}
    assert deviating(evidence) == {}
    assert set(find_deviations(evidence, DETECTION)) == set(evidence)  # each judged


def test_few_peers_or_few_calls_judge_nobody() -> None:
    evidence = {f"w{i}": calls(0) for i in range(3)} | {"bad": calls(50)}
    assert list(deviating(evidence)) == ["bad"]
    assert find_deviations(evidence, dataclasses.replace(DETECTION, min_peers=4)) == {}
    thin = {f"w{i}": calls(0, n=19) for i in range(3)} | {"bad": calls(50)}
    assert find_deviations(thin, DETECTION) == {}  # its peers have too few calls to count
    few = find_deviations({**evidence, "bad": calls(10, n=19)}, DETECTION)
    assert "bad" not in few and deviating({**evidence, "bad": calls(10, n=19)}) == {}


def test_a_small_excess_is_no_deviation() -> None:
    evidence = {f"w{i}": calls(1) for i in range(5)} | {"meh": calls(9)}
    assert deviating(evidence) == {}  # 9 % vs 1 %: under the 10-point minimum
    fast = {f"w{i}": calls(0, 0.01) for i in range(5)} | {"slower": calls(0, 0.1)}
    assert deviating(fast) == {}  # 10x, but 90 ms: under minimumSeconds
    for low in range(1, 5):  # exactly 10 points above is enough, whatever the float noise
        boundary = {f"w{i}": calls(low) for i in range(5)} | {"edge": calls(low + 10)}
        assert list(deviating(boundary)) == ["edge"]


def test_a_measure_switched_off_is_not_judged_and_stdevs_asks_for_more() -> None:
    evidence = {f"w{i}": calls(0, 10.0) for i in range(4)} | {"slow": calls(0, 40.0)}
    off = parse_outlier_detection({"enabled": True, "duration": {"enabled": False}})
    assert deviating(evidence, off) == {}
    spread = {f"w{i}": calls(0, 5.0 + 10 * i) for i in range(5)} | {"slow": calls(0, 120.0)}
    assert list(deviating(spread)) == ["slow"]
    strict = dataclasses.replace(DETECTION, stdevs=10.0)
    assert deviating(spread, strict) == {}


def test_breakers_are_compared_with_the_same_breaker_of_the_peers() -> None:
    evidence = {f"w{i}": calls(0, breaker="gpu") + calls(40, breaker="cpu") for i in range(4)} | {
        "bad": calls(40, breaker="gpu") + calls(40, breaker="cpu")
    }
    deviations = deviating(evidence)
    assert list(deviations) == ["bad"] and deviations["bad"].breaker == "gpu"


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=40), st.data())
def test_leaving_one_out_gives_the_others_median_mean_and_deviation(
    values: list[float], data: st.DataObject
) -> None:
    left_out = data.draw(st.sampled_from(values))
    others = list(values)
    others.remove(left_out)
    median, mean, stdev = _Peers.of(values).without(left_out)
    assert median == statistics.median(others)
    assert abs(mean - statistics.fmean(others)) <= 1e-6 * max(1.0, abs(mean))
    assert abs(stdev - statistics.pstdev(others)) <= 1e-3 * max(1.0, max(values))


def test_a_deviation_becomes_an_outlier_once_it_lasts_the_sustain_period() -> None:
    deviation = (deviating({f"w{i}": calls(0) for i in range(5)} | {"bad": calls(30)})["bad"],)
    first = outlier_status("uid-bad", deviation, None, DETECTION, NOW)
    assert first is not None and first["verdict"] == Verdict.DEVIATING
    assert first["since"] == rfc3339(NOW) and first["enforced"] is True
    assert sustained_at({"outlier": first}, DETECTION) == NOW + 60
    later = outlier_status("uid-bad", deviation, first, DETECTION, NOW + 59.9)
    assert later is not None and later["verdict"] == Verdict.DEVIATING
    sustained = outlier_status("uid-bad", deviation, first, DETECTION, NOW + 60)
    assert sustained is not None and sustained["verdict"] == Verdict.OUTLIER
    assert sustained["since"] == first["since"]
    assert sustained_at({"outlier": sustained}, DETECTION) is None
    skewed = outlier_status("uid-bad", deviation, {"since": rfc3339(NOW + 999)}, DETECTION, NOW)
    assert skewed is not None and skewed["since"] == rfc3339(NOW)
    assert outlier_status("uid-bad", (), sustained, DETECTION, NOW + 61) is None
    # Not judged this pass (too few peers read yet): the record stays as it was.
    assert outlier_status("uid-bad", None, sustained, DETECTION, NOW + 61) == sustained


def test_enforcing_percent_is_a_stable_choice_that_only_grows_and_dry_run_enforces_none() -> None:
    deviation = (deviating({f"w{i}": calls(0) for i in range(5)} | {"bad": calls(30)})["bad"],)
    uids = [f"uid-{i}" for i in range(200)]

    def enforced(percent: int, dry_run: bool = False) -> set[str]:
        detection = dataclasses.replace(DETECTION, enforcing_percent=percent, dry_run=dry_run)
        return {
            uid
            for uid in uids
            if (outlier_status(uid, deviation, None, detection, NOW) or {})["enforced"]
        }

    assert enforced(0) == set() and enforced(100) == set(uids)
    assert enforced(10) <= enforced(50) <= enforced(90)
    assert 60 <= len(enforced(50)) <= 140
    assert enforced(100, dry_run=True) == set()


# The plan: six workers, one failing 30 % of its tasks.

SPEC: dict[str, Any] = {"outlierDetection": {"enabled": True, "sustainSeconds": 60}}


def fleet_evidence(pods: list[PodView], bad: dict[str, int]) -> dict[str, Any]:
    return {p.uid: reading(p, evidence=calls(bad.get(p.name, 0))) for p in pods}


def settled_fleet(spec: dict[str, Any] = SPEC, n: int = 6) -> tuple[PolicyObservation, list]:
    pods = [pod(f"w{i}", node=f"node-{i}") for i in range(n)]
    obs = observe(policy(**spec), pods, fleet_evidence(pods, {}))
    return settle(obs, plan_policy(obs)), pods


def step(obs: PolicyObservation, **changes: Any) -> tuple[PolicyObservation, Plan]:
    obs = dataclasses.replace(obs, **changes)
    plan = plan_policy(obs)
    return settle(obs, plan), plan


def test_an_outlier_is_marked_unready_after_the_sustain_period_and_given_back_after() -> None:
    obs, pods = settled_fleet()
    failing = fleet_evidence(pods, {"w2": 30})
    obs, plan = step(obs, readings=failing)
    (write,) = plan.circuit_states
    assert write.name == "w2" and write.status["outlier"]["verdict"] == "deviating"
    assert not plan.conditions and not write.events
    assert obs.policy.status["outliers"] == 0
    obs, plan = step(obs, now=NOW + 30)
    assert not plan.circuit_states and not plan.conditions  # waiting changes nothing
    obs, plan = step(obs, now=NOW + 60)
    (write,) = plan.circuit_states
    assert [e.reason for e in write.events] == ["OutlierDetected"]
    assert "failure rate 30% over its last 100 calls, peers' median 0% (5 peers)" in (
        write.events[0].message
    )
    (mark,) = plan.conditions
    assert (mark.pod, mark.condition.status, mark.condition.reason) == ("w2", "False", "Outlier")
    assert mark.marks_unready and [e.reason for e in mark.events] == ["PodMarkedUnready"]
    assert obs.policy.status["outliers"] == 1 and obs.policy.status["unreadyPods"] == 1
    obs, plan = step(obs, now=NOW + 90, readings=fleet_evidence(pods, {"w2": 31}))
    assert not plan.conditions  # a new figure rewrites the state, never the condition
    obs, plan = step(obs, now=NOW + 120, readings=fleet_evidence(pods, {}))
    (write,) = plan.circuit_states
    assert "outlier" not in write.status
    assert [e.reason for e in write.events] == ["OutlierCleared"]
    (back,) = plan.conditions
    assert (back.pod, back.condition.status) == ("w2", "True")
    assert [e.reason for e in back.events] == ["PodMarkedReady"]


def test_an_outlier_whose_endpoint_goes_dark_is_given_back() -> None:
    obs, pods = settled_fleet()
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
    obs, plan = step(obs, now=NOW + 60)
    assert [w.condition.reason for w in plan.conditions] == ["Outlier"]
    dark = {**obs.readings, "uid-w2": reading(pods[2], "unknown")}
    obs, plan = step(obs, now=NOW + 61, readings=dark)
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w2", "True")]


def test_dry_run_and_enforcing_percent_record_outliers_but_mark_none() -> None:
    for detection in ({"dryRun": True}, {"enforcingPercent": 0}):
        spec = {"outlierDetection": {**SPEC["outlierDetection"], **detection}}
        obs, pods = settled_fleet(spec)
        obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
        obs, plan = step(obs, now=NOW + 60)
        (write,) = plan.circuit_states
        assert write.status["outlier"] | {"enforced": False} == write.status["outlier"]
        (event,) = write.events
        assert event.reason == "OutlierDetected"
        assert ("dry run" if "dryRun" in detection else "not enforced") in event.message
        assert not plan.conditions
        assert obs.policy.status["outliers"] == 1


def test_outliers_are_marked_inside_the_unready_cap() -> None:
    spec = {**SPEC, "safety": {"maxUnreadyPods": 1}}
    obs, pods = settled_fleet(spec, n=10)
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 40, "w5": 40}))
    obs, plan = step(obs, now=NOW + 60)
    assert [w.pod for w in plan.conditions if w.marks_unready] == ["w2"]
    assert plan.suppressed == {("mark_unready", "cap"): 1}


def test_an_open_circuit_is_reported_as_open_not_as_an_outlier() -> None:
    obs, pods = settled_fleet()
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
    opened = {**obs.readings, "uid-w2": reading(pods[2], "open", trips=1, evidence=calls(30))}
    obs, plan = step(obs, now=NOW + 60, readings=opened)
    assert [w.condition.reason for w in plan.conditions] == ["CircuitOpen"]


def test_switching_detection_off_gives_outliers_back() -> None:
    obs, pods = settled_fleet()
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
    obs, _ = step(obs, now=NOW + 60)
    off = dataclasses.replace(obs.policy, spec=policy().spec)
    obs, plan = step(obs, now=NOW + 61, policy=off)
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w2", "True")]
    assert all("outlier" not in w.status for w in plan.circuit_states)


def test_outliers_count_toward_a_suspected_shared_outage() -> None:
    spec = {**SPEC, "safety": {"stormThreshold": 2, "maxUnreadyPods": "100%"}}
    obs, pods = settled_fleet(spec)
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
    obs, plan = step(obs, now=NOW + 60)
    assert [w.condition.reason for w in plan.conditions] == ["Outlier"]
    opened = {**obs.readings, "uid-w4": reading(pods[4], "open", trips=1, evidence=calls())}
    obs, plan = step(obs, now=NOW + 61, readings=opened)
    assert not [w for w in plan.conditions if w.marks_unready]  # one outlier + one trip: a storm
    assert plan.suppressed == {("mark_unready", "storm"): 1}
    assert (
        "1 of 6 watched workers tripped, 1 outliers"
        in obs.policy.status["conditions"][1]["message"]
    )


def marked_outlier() -> tuple[PolicyObservation, list[PodView]]:
    """Six workers, w2 an outlier marked unready."""
    obs, pods = settled_fleet()
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
    obs, plan = step(obs, now=NOW + 60)
    assert [w.condition.reason for w in plan.conditions] == ["Outlier"]
    return obs, pods


def test_after_a_restart_a_recorded_verdict_waits_for_its_endpoint() -> None:
    obs, pods = marked_outlier()
    # A restart: nothing read yet. The marked pod stays as it is; a pod whose mark the cap
    # held back (its condition True) is not marked on a record alone, however old.
    pending = frozenset(p.uid for p in pods)
    restarted = dataclasses.replace(obs, readings={}, first_read_pending=pending, now=NOW + 86400)
    assert not plan_policy(restarted).conditions
    held = dataclasses.replace(restarted.pods["w2"], conditions={})
    pods_now = {**restarted.pods, "w2": held}
    selected = [pods_now[p.name] for p in restarted.selected]
    plan = plan_policy(dataclasses.replace(restarted, pods=pods_now, selected=selected))
    assert not [w for w in plan.conditions if w.marks_unready]
    # Switched off while the operator was down: given back before any endpoint answers.
    off = dataclasses.replace(obs.policy, spec=policy().spec)
    plan = plan_policy(dataclasses.replace(restarted, policy=off))
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w2", "True")]


def test_endpoints_answering_one_by_one_after_a_restart_keep_a_verdict() -> None:
    obs, pods = marked_outlier()
    first = {p.uid: obs.readings[p.uid] for p in pods[1:3]}  # w2 and one peer answered
    pending = frozenset(p.uid for p in pods) - first.keys()
    obs, plan = step(obs, now=NOW + 100, readings=first, first_read_pending=pending)
    assert not plan.circuit_states and not plan.conditions
    assert obs.circuit_states["w2"].status["outlier"]["verdict"] == "outlier"
    # Once every endpoint has answered, too few peers with evidence clears it (no evidence).
    obs, plan = step(obs, now=NOW + 101, first_read_pending=frozenset())
    assert [(w.pod, w.condition.status) for w in plan.conditions] == [("w2", "True")]


def test_an_outlier_forced_closed_is_neither_marked_nor_counted_toward_a_storm() -> None:
    spec = {**SPEC, "safety": {"stormThreshold": 2, "maxUnreadyPods": "100%"}}
    obs, pods = settled_fleet(spec)
    obs, _ = step(obs, readings=fleet_evidence(pods, {"w2": 30}))
    forced = {**obs.readings, "uid-w2": reading(pods[2], "forced_closed", evidence=calls(30))}
    obs, plan = step(obs, now=NOW + 60, readings=forced)
    assert [(w.pod, w.condition.reason) for w in plan.conditions] == [("w2", "CircuitForcedClosed")]
    opened = {**forced, "uid-w4": reading(pods[4], "open", trips=1, evidence=calls())}
    obs, plan = step(obs, now=NOW + 61, readings=opened)
    assert [(w.pod, w.condition.reason) for w in plan.conditions] == [("w4", "CircuitOpen")]


def test_an_outlier_is_not_rewritten_when_only_its_peers_move() -> None:
    obs, pods = marked_outlier()
    for n, peer_failures in enumerate((1, 2, 0, 1)):
        jitter = fleet_evidence(pods, {"w2": 30, "w0": peer_failures, "w4": peer_failures})
        obs, plan = step(obs, now=NOW + 61 + n, readings=jitter)
        assert not plan.circuit_states and not plan.conditions
