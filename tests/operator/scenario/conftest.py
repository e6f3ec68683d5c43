"""Fixtures for the operator's scenarios: a namespace on the real API server, and operator
processes running as the chart's ServiceAccount (tests themselves act as cluster admin)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitgate_devkit.cluster.accounts import ChartAccount, OperatorIdentity
from circuitgate_devkit.cluster.control_plane import ControlPlane
from circuitgate_devkit.cluster.objects import OperatorProcess, stop_operators
from tests.worker.scenario.conftest import make_lab  # noqa: F401  (real brokers and workers)


@pytest.fixture(scope="session")
def operator_account(
    control_plane: ControlPlane, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartAccount]:
    """The chart installed with all of its RBAC (node remediation, eviction, peering, webhook)
    under a release of its own; its ServiceAccount is who every operator process runs as."""
    account = ChartAccount(control_plane, tmp_path_factory.mktemp("operator-account"))
    with account.installed():
        yield account


@pytest.fixture
def operator_identity(operator_account: ChartAccount, namespace: str) -> OperatorIdentity:
    """The chart's ServiceAccount, granted what the chart grants an operator serving the
    test's namespace (``watchNamespaces: [namespace]``), with a kubeconfig holding its token."""
    return operator_account.serve([namespace])


@pytest.fixture
def start_operator(
    operator_account: ChartAccount,
    operator_identity: OperatorIdentity,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start ``python -m circuitgate_operator`` processes as the chart's ServiceAccount (for the
    test's namespace unless told otherwise: ``namespace=None`` serves all); all are stopped at
    the end, and their logs shown if the test failed. A request the API server refused any of
    them (in its log, or a 403 in its metrics) fails the test: the chart must grant everything
    the operator does."""
    started: list[OperatorProcess] = []

    def start(*args: str, wait: bool = True, **kwargs: Any) -> OperatorProcess:
        kwargs.setdefault("namespace", namespace)
        scope = [kwargs["namespace"]] if kwargs["namespace"] else []
        identity = operator_account.serve(scope)
        process = OperatorProcess(identity, tmp_path, *args, **kwargs)
        started.append(process)
        return process.start(wait=wait)

    yield start
    refused = stop_operators(started)
    assert not refused, (
        f"the API server refused the operator (running as {operator_account.user}): the chart "
        f"does not grant something it does: {refused}"
    )


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    """One operator for the test's namespace, standalone."""
    return start_operator()
