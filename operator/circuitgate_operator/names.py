"""The API names circuitgate owns (group, version, the readiness-gate condition type), and
label-safe forms of the names it puts in labels."""

from __future__ import annotations

import hashlib
import re

GROUP = "circuitgate.io"
VERSION = "v1alpha1"
CONDITION_TYPE = "circuitgate.io/circuit-closed"
# Set on a pod whose eviction we asked for and were granted: the eviction is then known as ours
# by any replica, after any restart, and never read as someone else's drain of the node.
EVICTED_CONDITION_TYPE = "circuitgate.io/evicted"
# The field manager of our writes to nodes: managedFields then tell whose a later change is.
FIELD_MANAGER = "circuitgate-operator"

__all__ = (
    "CONDITION_TYPE",
    "EVICTED_CONDITION_TYPE",
    "FIELD_MANAGER",
    "GROUP",
    "VERSION",
    "label_value",
)

_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_MAX_LABEL = 63
_DIGEST = 10


def label_value(name: str) -> str:
    """A label value standing for name: the name itself when it is one (at most 63
    characters), else a prefix of it and a hash of the whole, so distinct names stay distinct
    and one name always maps to the same value."""
    if len(name) <= _MAX_LABEL and _LABEL_VALUE.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_DIGEST]
    prefix = re.sub(r"[^-A-Za-z0-9_.]", "-", name)[: _MAX_LABEL - _DIGEST - 1]
    prefix = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", prefix)
    return f"{prefix}-{digest}" if prefix else digest
