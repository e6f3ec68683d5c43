"""Which policy watches which pod, and where a watched pod's endpoint is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model import PodView, PolicyView

__all__ = ("Selection", "endpoint_url", "resolve_port", "select_pods")


@dataclass(frozen=True)
class Selection:
    """Pods each policy watches, and pods two or more policies select (watched by none: which
    policy's settings apply would be a guess, so it is reported instead)."""

    watched: dict[str, list[PodView]] = field(default_factory=dict)
    overlapping: dict[str, tuple[str, ...]] = field(default_factory=dict)


def select_pods(pods: Iterable[PodView], policies: Iterable[PolicyView]) -> Selection:
    """Match pods to the live policies of their namespace by label selector."""
    by_namespace: dict[str, list[PolicyView]] = {}
    for policy in policies:
        if not policy.deleting:
            by_namespace.setdefault(policy.namespace, []).append(policy)
    selection = Selection(watched={policy.key: [] for ps in by_namespace.values() for policy in ps})
    for pod in pods:
        matching = [
            policy
            for policy in by_namespace.get(pod.namespace, ())
            if policy.spec.selector.matches(pod.labels)
        ]
        if len(matching) == 1:
            selection.watched[matching[0].key].append(pod)
        elif len(matching) > 1:
            selection.overlapping[pod.key] = tuple(sorted(policy.name for policy in matching))
    return selection


def resolve_port(pod: PodView, port: int | str) -> int | None:
    """A number as is; a name through the pod's container ports, like a Service's targetPort.
    A numeric string (from a hand-written body) counts as a number."""
    if isinstance(port, int):
        return port if 0 < port < 65536 else None
    if port.isdigit():
        return resolve_port(pod, int(port))
    return pod.container_ports.get(port)


def endpoint_url(pod: PodView, port: int | str, path: str) -> str | None:
    """The URL of the pod's breaker document, or None while it has no IP or no such port."""
    number = resolve_port(pod, port)
    if not pod.pod_ip or number is None:
        return None
    host = f"[{pod.pod_ip}]" if ":" in pod.pod_ip else pod.pod_ip
    return f"http://{host}:{number}{path}"
