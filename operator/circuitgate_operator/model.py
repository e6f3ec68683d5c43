"""Immutable views of the Kubernetes objects the operator reads, parsed once from raw bodies.

Decisions take these views, never raw dicts, so the "decide" layer is plain data in, plain data
out. Defaults mirror the CRD's, so a body the API server has not defaulted (an older object, a
unit test) reads the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from .clock import parse_time
from .names import CONDITION_TYPE, label_value

__all__ = (
    "EXCLUDE_LABEL",
    "PAUSE_ANNOTATION",
    "POLICY_LABEL",
    "CircuitStateView",
    "Condition",
    "LabelSelector",
    "NodeRemediation",
    "NodeView",
    "OutlierDetection",
    "PodView",
    "PolicySpec",
    "PolicyView",
    "Safety",
    "Taint",
    "WatchSpec",
    "parse_circuit_state",
    "parse_node",
    "parse_pod",
    "parse_policy",
)

PAUSE_ANNOTATION = "circuitgate.io/paused"
EXCLUDE_LABEL = "circuitgate.io/exclude"
# On each CircuitState: the policy that wrote it (its label-safe name, `PolicyView.label`), so
# its policy can list and clean up its own.
POLICY_LABEL = "circuitgate.io/policy"

IntOrPercent = int | str


@dataclass(frozen=True)
class LabelSelector:
    """A standard label selector (matchLabels plus matchExpressions, all must hold)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> LabelSelector:
        raw = raw or {}
        labels = tuple(sorted((raw.get("matchLabels") or {}).items()))
        expressions = tuple(
            (e["key"], e["operator"], tuple(e.get("values") or ()))
            for e in raw.get("matchExpressions") or ()
        )
        return cls(labels, expressions)

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether labels satisfy the selector. An empty selector matches nothing here: the CRD
        forbids it, and matching every pod in a namespace by accident is the worse error."""
        if self.empty:
            return False
        if any(labels.get(key) != value for key, value in self.match_labels):
            return False
        for key, operator, values in self.match_expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
            if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
                return False
        return True


WatchMode = Literal["stream", "longPoll", "poll"]


@dataclass(frozen=True)
class WatchSpec:
    """How the endpoints are followed: stream falls back to longPoll, longPoll to polling."""

    mode: WatchMode = "stream"
    poll_interval: float = 10.0
    timeout: float = 5.0
    long_poll: float = 30.0


@dataclass(frozen=True)
class Taint:
    """A node taint; ``time_added`` (NoExecute taints carry one) is written back as it was."""

    key: str
    value: str
    effect: str
    time_added: str = ""

    def to_json(self) -> dict[str, str]:
        data = {"key": self.key, "effect": self.effect}
        if self.value:
            data["value"] = self.value
        if self.time_added:
            data["timeAdded"] = self.time_added
        return data

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"


@dataclass(frozen=True)
class NodeRemediation:
    enabled: bool = False
    node_selector: tuple[tuple[str, str], ...] = ()
    trip_threshold: int = 3
    window: float = 600.0
    min_distinct_pods: int = 2
    taint: Taint = Taint("circuitgate.io/tripped", "", "NoSchedule")
    cooldown: float = 900.0
    evict_tripped_pods: bool = False


@dataclass(frozen=True)
class Safety:
    max_unready_pods: IntOrPercent = "25%"
    max_cordoned_nodes: IntOrPercent = 1
    storm_threshold: IntOrPercent = "50%"


# How many times its peers' median makes a worker's failure rate or duration an outlier's.
DEFAULT_FACTOR = 3.0


@dataclass(frozen=True)
class OutlierDetection:
    """Judging each worker against its peers (`decide.outliers`). A measure whose factor is
    None is not judged; ``stdevs``, when set, also asks for that many of the peers' standard
    deviations above their mean."""

    enabled: bool = False
    dry_run: bool = False
    enforcing_percent: int = 100
    min_peers: int = 3
    min_calls: int = 20
    sustain: float = 60.0
    failure_rate_factor: float | None = DEFAULT_FACTOR
    failure_rate_minimum: float = 0.1
    duration_factor: float | None = DEFAULT_FACTOR
    duration_minimum: float = 1.0
    stdevs: float | None = None
    count_node_trips: bool = False


@dataclass(frozen=True)
class PolicySpec:
    selector: LabelSelector
    port: int | str
    path: str = "/circuit"
    watch: WatchSpec = WatchSpec()
    readiness_enabled: bool = True
    nodes: NodeRemediation = NodeRemediation()
    safety: Safety = Safety()
    dry_run: bool = False
    outliers: OutlierDetection = OutlierDetection()


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


@dataclass(frozen=True)
class PolicyView:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: PolicySpec
    paused: bool = False
    deleting: bool = False
    resource_version: str = ""
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        """The policy's name as a label value (hashed when longer than a label allows)."""
        return label_value(self.name)


@dataclass(frozen=True)
class ContainerView:
    """A container of a pod: the port numbers it declares, the Unix time it started
    running (None while it does not run) and how often the kubelet restarted it."""

    name: str
    ports: frozenset[int] = frozenset()
    started_at: float | None = None
    restarts: int = 0


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node_name: str = ""
    pod_ip: str = ""
    phase: str = "Pending"
    deleting: bool = False
    readiness_gates: tuple[str, ...] = ()
    conditions: Mapping[str, Condition] = field(default_factory=dict)
    container_ports: Mapping[str, int] = field(default_factory=dict)
    resource_version: str = ""
    created_at: float | None = None
    containers: tuple[ContainerView, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def gated(self) -> bool:
        return CONDITION_TYPE in self.readiness_gates

    @property
    def gate_condition(self) -> Condition | None:
        return self.conditions.get(CONDITION_TYPE)

    @property
    def running(self) -> bool:
        """Alive enough to serve an endpoint: not finished, not being deleted."""
        return not self.deleting and self.phase not in ("Succeeded", "Failed")

    def placement(self) -> tuple[object, ...]:
        """What decides which policy watches the pod and where: a pod whose conditions or
        containers change keeps its selection and its watcher."""
        return (self.uid, self.labels, self.deleting, self.phase, self.pod_ip,
                self.container_ports, self.node_name)  # fmt: skip


@dataclass(frozen=True)
class NodeView:
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    resource_version: str = ""
    # From managedFields: (manager, Unix time) of each writer that set spec.unschedulable.
    cordoned_by_managers: tuple[tuple[str, float], ...] = ()

    @property
    def excluded(self) -> bool:
        return self.labels.get(EXCLUDE_LABEL) == "true"


@dataclass(frozen=True)
class CircuitStateView:
    """``policy``: the label-safe name of the policy that wrote it (`PolicyView.label`)."""

    namespace: str
    name: str
    policy: str
    owner_uid: str = ""
    status: Mapping[str, Any] = field(default_factory=dict)
    resource_version: str = ""
    # When it was created: when some replica of ours began watching the pod.
    created_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _seconds(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key)
    return float(value) if isinstance(value, int | float) else default


def _int_or_percent(value: Any, default: IntOrPercent) -> IntOrPercent:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return default
    return value


def parse_policy_spec(spec: Mapping[str, Any]) -> PolicySpec:
    endpoint = spec.get("endpoint") or {}
    watch = spec.get("watch") or {}
    readiness = spec.get("readiness") or {}
    nodes = spec.get("nodeRemediation") or {}
    taint = nodes.get("taint") or {}
    safety = spec.get("safety") or {}
    defaults_nodes, defaults_safety = NodeRemediation(), Safety()
    return PolicySpec(
        selector=LabelSelector.parse(spec.get("selector")),
        port=endpoint.get("port", 0),
        path=endpoint.get("path") or "/circuit",
        watch=WatchSpec(
            mode=cast(WatchMode, watch.get("mode") or "stream"),
            poll_interval=_seconds(watch, "pollIntervalSeconds", 10.0),
            timeout=_seconds(watch, "timeoutSeconds", 5.0),
            long_poll=_seconds(watch, "longPollSeconds", 30.0),
        ),
        readiness_enabled=bool(readiness.get("enabled", True)),
        nodes=NodeRemediation(
            enabled=bool(nodes.get("enabled", False)),
            node_selector=tuple(sorted((nodes.get("nodeSelector") or {}).items())),
            trip_threshold=int(nodes.get("tripThreshold", defaults_nodes.trip_threshold)),
            window=_seconds(nodes, "windowSeconds", defaults_nodes.window),
            min_distinct_pods=int(nodes.get("minDistinctPods", defaults_nodes.min_distinct_pods)),
            taint=Taint(
                key=taint.get("key") or defaults_nodes.taint.key,
                value=taint.get("value") or "",
                effect=taint.get("effect") or defaults_nodes.taint.effect,
            ),
            cooldown=_seconds(nodes, "cooldownSeconds", defaults_nodes.cooldown),
            evict_tripped_pods=bool(nodes.get("evictTrippedPods", False)),
        ),
        safety=Safety(
            max_unready_pods=_int_or_percent(
                safety.get("maxUnreadyPods"), defaults_safety.max_unready_pods
            ),
            max_cordoned_nodes=_int_or_percent(
                safety.get("maxCordonedNodes"), defaults_safety.max_cordoned_nodes
            ),
            storm_threshold=_int_or_percent(
                safety.get("stormThreshold"), defaults_safety.storm_threshold
            ),
        ),
        dry_run=bool(spec.get("dryRun", False)),
        outliers=parse_outlier_detection(spec.get("outlierDetection") or {}),
    )


def _factor(raw: Mapping[str, Any]) -> float | None:
    """A measure's factor, None when the measure is off."""
    return _seconds(raw, "factor", DEFAULT_FACTOR) if raw.get("enabled", True) else None


def parse_outlier_detection(raw: Mapping[str, Any]) -> OutlierDetection:
    defaults = OutlierDetection()
    failure_rate = raw.get("failureRate") or {}
    duration = raw.get("duration") or {}
    stdevs = raw.get("stdevs")
    return OutlierDetection(
        enabled=bool(raw.get("enabled", False)),
        dry_run=bool(raw.get("dryRun", False)),
        enforcing_percent=int(raw.get("enforcingPercent", defaults.enforcing_percent)),
        min_peers=int(raw.get("minPeers", defaults.min_peers)),
        min_calls=int(raw.get("minCalls", defaults.min_calls)),
        sustain=_seconds(raw, "sustainSeconds", defaults.sustain),
        failure_rate_factor=_factor(failure_rate),
        failure_rate_minimum=_seconds(failure_rate, "minimum", defaults.failure_rate_minimum),
        duration_factor=_factor(duration),
        duration_minimum=_seconds(duration, "minimumSeconds", defaults.duration_minimum),
        stdevs=float(stdevs) if isinstance(stdevs, int | float) and stdevs > 0 else None,
        count_node_trips=bool(raw.get("countTowardNodeTrips", False)),
    )


def parse_policy(body: Mapping[str, Any]) -> PolicyView:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return PolicyView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        spec=parse_policy_spec(body.get("spec") or {}),
        paused=annotations.get(PAUSE_ANNOTATION, "").lower() == "true",
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=meta.get("resourceVersion", ""),
        status=dict(body.get("status") or {}),
    )


def parse_condition(raw: Mapping[str, Any]) -> Condition:
    return Condition(
        type=raw.get("type", ""),
        status=raw.get("status", "Unknown"),
        reason=raw.get("reason") or "",
        message=raw.get("message") or "",
        last_transition_time=str(raw.get("lastTransitionTime") or ""),
    )


def _containers(spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[ContainerView, ...]:
    statuses = {s.get("name", ""): s for s in status.get("containerStatuses") or ()}
    return tuple(
        ContainerView(
            name=c.get("name", ""),
            ports=frozenset(
                int(p["containerPort"]) for p in c.get("ports") or () if p.get("containerPort")
            ),
            started_at=_started_at(statuses.get(c.get("name", "")) or {}),
            restarts=_restarts(statuses.get(c.get("name", "")) or {}),
        )
        for c in spec.get("containers") or ()
    )


def _started_at(status: Mapping[str, Any]) -> float | None:
    return parse_time(((status.get("state") or {}).get("running") or {}).get("startedAt"))


def _restarts(status: Mapping[str, Any]) -> int:
    count = status.get("restartCount")
    return count if isinstance(count, int) and count > 0 else 0


def parse_pod(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    ports: dict[str, int] = {}
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") and port.get("containerPort"):
                ports.setdefault(port["name"], int(port["containerPort"]))
    conditions = {c.get("type", ""): parse_condition(c) for c in status.get("conditions") or ()}
    return PodView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        labels=dict(meta.get("labels") or {}),
        node_name=spec.get("nodeName") or "",
        pod_ip=status.get("podIP") or "",
        phase=status.get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        readiness_gates=tuple(g.get("conditionType", "") for g in spec.get("readinessGates") or ()),
        conditions=conditions,
        container_ports=ports,
        resource_version=meta.get("resourceVersion", ""),
        created_at=parse_time(meta.get("creationTimestamp")),
        containers=_containers(spec, status),
    )


def _unschedulable_managers(meta: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    found = []
    for entry in meta.get("managedFields") or ():
        fields = ((entry.get("fieldsV1") or {}).get("f:spec")) or {}
        when = parse_time(entry.get("time"))
        if "f:unschedulable" in fields and when is not None:
            found.append((str(entry.get("manager") or ""), when))
    return tuple(found)


def parse_node(body: Mapping[str, Any]) -> NodeView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return NodeView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        unschedulable=bool(spec.get("unschedulable", False)),
        taints=tuple(
            Taint(
                t.get("key", ""),
                t.get("value") or "",
                t.get("effect", ""),
                str(t.get("timeAdded") or ""),
            )
            for t in spec.get("taints") or ()
        ),
        resource_version=meta.get("resourceVersion", ""),
        cordoned_by_managers=_unschedulable_managers(meta),
    )


def parse_circuit_state(body: Mapping[str, Any]) -> CircuitStateView:
    meta = body.get("metadata") or {}
    owners = [o for o in meta.get("ownerReferences") or () if o.get("kind") == "Pod"]
    return CircuitStateView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        policy=(meta.get("labels") or {}).get(POLICY_LABEL, ""),
        owner_uid=owners[0].get("uid", "") if owners else "",
        status=dict(body.get("status") or {}),
        resource_version=meta.get("resourceVersion", ""),
        created_at=parse_time(meta.get("creationTimestamp")),
    )
