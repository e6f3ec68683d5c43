"""The readiness-gate condition a gated pod should carry, from its circuit's state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import Condition, PodView
from ..names import CONDITION_TYPE

__all__ = ("UNREADY_STATES", "decide_readiness", "same_condition")

UNREADY_STATES = frozenset({"open", "forced_open"})


def decide_readiness(pod: PodView, status: Mapping[str, Any], now: str) -> Condition | None:
    """The condition to hold, or None to leave the pod's condition as it is.

    Open and forced-open make it False; closed, half-open and forced-closed True (half-open
    needs traffic for its trial). An unknown state changes nothing, since an unreadable
    endpoint is not evidence of a trip, except that a gated pod with no condition yet gets
    True at once: without the condition it could never become Ready.
    """
    state = status.get("state", "unknown")
    breaker = status.get("breaker") or "?"
    current = pod.gate_condition
    if state == "open":
        until = status.get("mayCloseAt")
        message = f"breaker {breaker} is open" + (f" until {until}" if until else "")
        wanted = ("False", "CircuitOpen", message)
    elif state == "forced_open":
        wanted = ("False", "CircuitForcedOpen", f"breaker {breaker} is forced open")
    elif state == "half_open":
        wanted = ("True", "CircuitHalfOpen", f"breaker {breaker} is half-open")
    elif state == "forced_closed":
        wanted = ("True", "CircuitForcedClosed", f"breaker {breaker} is forced closed")
    elif state == "closed":
        wanted = ("True", "CircuitClosed", f"breaker {breaker} is closed")
    elif current is None:
        wanted = ("True", "CircuitNotRead", "the breaker endpoint has not been read yet")
    else:
        return None
    status_value, reason, message = wanted
    if current is not None and current.status == status_value:
        transition = current.last_transition_time or now
    else:
        transition = now
    return Condition(CONDITION_TYPE, status_value, reason, message, transition)


def same_condition(current: Condition | None, wanted: Condition) -> bool:
    """Whether writing wanted would change nothing a reader sees."""
    return current is not None and (current.status, current.reason, current.message) == (
        wanted.status,
        wanted.reason,
        wanted.message,
    )
