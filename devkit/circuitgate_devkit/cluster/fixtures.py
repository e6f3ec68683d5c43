"""Fixtures for tests against a real control plane: ``control_plane``, ``crds``, ``namespace``.

A pytest plugin, listed in ``pytest_plugins`` of tests/conftest.py, so every test folder shares
one control plane per session. It cannot be a conftest.py as well: pytest refuses to register
one module both as a conftest and as a plugin.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from circuitgate_devkit.cluster.control_plane import ControlPlane, ControlPlaneUnavailable
from circuitgate_devkit.paths import CRD_DIR

__all__ = ["control_plane", "crds", "namespace"]

_startup_key = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A running etcd, kube-apiserver and kube-controller-manager, shared by the session.

    Missing binaries fail the test, never skip it: CI must have built them first.
    """
    plane = ControlPlane()
    try:
        plane.start()
    except ControlPlaneUnavailable as error:
        unavailable = str(error)
    else:
        unavailable = ""
    if unavailable:
        if _in_ci():
            unavailable += "\nCI=true: `make test` builds the control plane before the tests"
        pytest.fail(unavailable, pytrace=False)
    try:
        request.config.stash[_startup_key] = (
            f"control plane {plane.bin_dir.name}: /readyz after {plane.startup_seconds:.1f} s"
        )
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> list[str]:
    """The project's CRDs, applied and Established; returns their names."""
    return install_crds(control_plane)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def install_crds(control_plane: ControlPlane, crd_dir: Path = CRD_DIR) -> list[str]:
    files = sorted(crd_dir.glob("*.yaml"))
    names = [path.name.removesuffix(".yaml") for path in files]
    control_plane.kubectl("apply", *(arg for path in files for arg in ("-f", str(path))))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{n}" for n in names)
    )
    return names


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = terminalreporter.config.stash.get(_startup_key, None)
    if line:
        terminalreporter.write_line(line)
