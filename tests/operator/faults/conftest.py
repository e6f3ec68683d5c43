"""Fixtures for fault injection: a fault proxy in front of the real API server, and operator
processes that reach the API server only through it, as a ServiceAccount of the chart's own
release (``circuitgate-operator-faults``: the scenarios' release is a session fixture of
theirs, and two installs of one release would clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitgate_devkit.cluster.accounts import ALL_RBAC, ChartAccount
from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.fault_proxy import FaultProxy
from circuitgate_devkit.cluster.objects import OperatorProcess, stop_operators

RELEASE = "circuitgate-operator-faults"


@pytest.fixture(scope="session")
def fault_account(
    control_plane: ControlPlane, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartAccount]:
    account = ChartAccount(
        control_plane,
        tmp_path_factory.mktemp("fault-account"),
        release=RELEASE,
        namespace=RELEASE,
        values={**ALL_RBAC, "fullnameOverride": RELEASE},
    )
    with account.installed():
        yield account


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    """Forwards everything until the test sets its ``faults``."""
    proxy = FaultProxy(control_plane, seed=16).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def start_operator(
    fault_account: ChartAccount, namespace: str, tmp_path: Path, proxy: FaultProxy
) -> Iterator[Callable[..., OperatorProcess]]:
    """Operator processes for the test's namespace whose API server is the proxy; stopped at
    the end with their logs shown. A request refused for want of RBAC fails the test."""
    started: list[OperatorProcess] = []
    fault_account.serve([namespace])  # before the test: the release makes its peering object

    def start(*args: str, wait: bool = True, **kwargs: Any) -> OperatorProcess:
        identity = fault_account.serve([namespace])
        kubeconfig = proxy.kubeconfig(identity.kubeconfig, tmp_path / f"kubeconfig-{len(started)}")
        env = {"KUBECONFIG": str(kubeconfig), **kwargs.pop("env", {})}
        process = OperatorProcess(identity, tmp_path, *args, namespace=namespace, env=env, **kwargs)
        started.append(process)
        return process.start(wait=wait)

    yield start
    refused = stop_operators(started)
    assert not refused, f"the API server refused the operator: {refused}"
