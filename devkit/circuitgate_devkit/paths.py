"""Where things are in the repository the dev kit is installed from (editable, always)."""

from __future__ import annotations

from pathlib import Path

__all__ = ("CHART", "CRD_DIR", "HACK", "REPO")

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
CRD_DIR = REPO / "crds"
CHART = REPO / "charts" / "circuitgate-operator"
