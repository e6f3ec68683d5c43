"""The API names circuitgate owns: group, version, and the readiness-gate condition type."""

GROUP = "circuitgate.io"
VERSION = "v1alpha1"
CONDITION_TYPE = "circuitgate.io/circuit-closed"

__all__ = ("CONDITION_TYPE", "GROUP", "VERSION")
