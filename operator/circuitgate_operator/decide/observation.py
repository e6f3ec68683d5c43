"""What one policy's decisions depend on, as the cluster and the endpoints show it now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..contract import Reading, unknown
from ..model import CircuitStateView, NodeView, PodView, PolicyView
from .nodes import Trip
from .selection import endpoint_url

__all__ = ("PolicyObservation",)


@dataclass(frozen=True)
class PolicyObservation:
    """Everything one policy's decisions depend on; nothing remembered from earlier ones but
    the trips and the recent evictions (edge-triggered, rebuilt after a restart)."""

    policy: PolicyView
    selected: Sequence[PodView]
    pods: Mapping[str, PodView]
    readings: Mapping[str, Reading]
    circuit_states: Mapping[str, CircuitStateView]
    nodes: Mapping[str, NodeView]
    trips: Mapping[str, Sequence[Trip]]
    now: float
    overlapping: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    evicted_recently: frozenset[str] = frozenset()
    # Pods we evicted whose mark (`EVICTED_CONDITION_TYPE`) has not landed yet: ours all the
    # same, never someone else's drain.
    evicted_unmarked: frozenset[str] = frozenset()
    # Pods (by uid) whose endpoint is being read for the first time: their readiness waits for
    # that answer (bounded by the policy's timeout), rather than being written twice.
    first_read_pending: frozenset[str] = frozenset()
    # Pods (by name) that another policy of the namespace watches: theirs, never restored here.
    watched_elsewhere: frozenset[str] = frozenset()
    # Cordons this process has sent and not yet seen answered: node name -> policy keys. The
    # cordon cap counts them, or two policies planning at once would both take its last slot.
    cordons_in_flight: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Each pod's reading, looked up once per pass (three steps ask for it).
    _reading_of: dict[str, Reading | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def matched(self) -> list[PodView]:
        """The selected pods that are alive enough to serve an endpoint."""
        return [pod for pod in self.selected if pod.running]

    def reading(self, pod: PodView) -> Reading | None:
        """The pod's reading at its current address, or None while there is none."""
        if pod.uid not in self._reading_of:
            self._reading_of[pod.uid] = self._read(pod)
        return self._reading_of[pod.uid]

    def _read(self, pod: PodView) -> Reading | None:
        spec = self.policy.spec
        if not pod.pod_ip:
            return None
        url = endpoint_url(pod, spec.port, spec.path)
        if url is None:
            reason = f"the pod has no container port named {spec.port!r}"
            return unknown(f"http://{pod.pod_ip}", "no_port", reason)
        reading = self.readings.get(pod.uid)
        # A reading of an old address (the pod or the policy changed since) says nothing now.
        return reading if reading is not None and reading.url == url else None
