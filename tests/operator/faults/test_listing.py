"""The operator's own listings against the real API server through the fault proxy: a brief
refusal is ridden out, a lasting one or a real error is reported."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from circuitgate_devkit.cluster.accounts import ChartAccount
from circuitgate_devkit.cluster.fault_proxy import FaultProxy, Faults
from circuitgate_devkit.cluster.objects import Cluster
from circuitgate_operator.act.api import ApiError, KubeApi
from circuitgate_operator.act.listing import READ_ATTEMPTS, Lister, Scope, policy_scopes
from circuitgate_operator.view import ClusterView

pytestmark = pytest.mark.cluster


@pytest.fixture
def api(
    fault_account: ChartAccount, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> Iterator[KubeApi]:
    identity = fault_account.serve([namespace])
    kubeconfig = proxy.kubeconfig(identity.kubeconfig, tmp_path / "kubeconfig")
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.retries = False  # as the operator's own client
    api = KubeApi(client.ApiClient(configuration))
    try:
        yield api
    finally:
        api.close()


def _list(api: KubeApi, scopes: tuple[Scope, ...]) -> None:
    asyncio.run(Lister(api, ClusterView()).ensure(scopes, since=time.time()))


def test_a_listing_rides_out_a_brief_refusal(
    api: KubeApi, proxy: FaultProxy, namespace: str
) -> None:
    """A restarted operator lists before deciding anything; an API server answering 429 for
    a moment (its priority and fairness queue full) must not fail the listing."""
    proxy.faults = Faults(too_many=1.0)
    threading.Timer(0.4, setattr, (proxy, "faults", Faults())).start()
    _list(api, policy_scopes(namespace))  # raises ApiError if a refusal got through
    assert proxy.counts["429"] >= 1


def test_a_lasting_refusal_fails_the_listing_after_a_few_tries(
    api: KubeApi, proxy: FaultProxy, namespace: str
) -> None:
    proxy.faults = Faults(server_error=1.0)
    with pytest.raises(ApiError) as failed:
        _list(api, policy_scopes(namespace)[1:2])
    assert failed.value.status in (500, 503, 504)
    assert proxy.requests == READ_ATTEMPTS


def test_a_request_the_api_server_forbids_is_not_tried_again(
    api: KubeApi, proxy: FaultProxy
) -> None:
    with pytest.raises(ApiError) as forbidden:
        _list(api, (Scope("pods", "kube-system", "/api/v1/namespaces/kube-system/pods"),))
    assert forbidden.value.status == 403
    assert proxy.requests == 1


def test_a_listing_by_name_forgets_what_is_gone_and_keeps_the_bodies(
    api: KubeApi, cluster: Cluster, namespace: str
) -> None:
    """The periodic listing is metadata only (names and versions of ten thousand pods, not
    their bodies): it must still forget a pod deleted behind the view's back, and leave the
    bodies of the others as they were."""
    node = cluster.node("n1")
    cluster.worker_pod("kept", node=node)
    cluster.worker_pod("gone", node=node)
    view = ClusterView()
    lister = Lister(api, view)
    scopes = policy_scopes(namespace)[1:2]
    asyncio.run(lister.ensure(scopes, since=time.time()))
    before = view.pods.get(namespace, "kept")
    assert before is not None and before.pod_ip
    assert view.pods.get(namespace, "gone") is not None
    cluster.core.delete_namespaced_pod("gone", namespace, grace_period_seconds=0)
    assert asyncio.run(lister.forget_gone(scopes, since=time.time()))
    assert view.pods.get(namespace, "gone") is None
    assert view.pods.get(namespace, "kept") is before
