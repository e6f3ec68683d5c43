"""The fault proxy itself, against the real API server: it forwards, and each fault is what a
client sees (a 429 with Retry-After, a 5xx, a dropped connection, a watch that ends early)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from circuitgate_devkit.cluster.accounts import ChartAccount
from circuitgate_devkit.cluster.fault_proxy import FaultProxy, Faults

pytestmark = pytest.mark.cluster


@pytest.fixture
def core(
    fault_account: ChartAccount, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> Iterator[client.CoreV1Api]:
    identity = fault_account.serve([namespace])
    kubeconfig = proxy.kubeconfig(identity.kubeconfig, tmp_path / "kubeconfig")
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.retries = False  # one request, one answer: what the proxy counts
    api_client = client.ApiClient(configuration)
    try:
        yield client.CoreV1Api(api_client)
    finally:
        api_client.close()


def test_each_fault_is_what_the_client_sees(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str
) -> None:
    assert core.list_namespaced_pod(namespace).items == []  # forwarded, token and all
    proxy.faults = Faults(too_many=1.0)
    with pytest.raises(ApiException) as refused:
        core.list_namespaced_pod(namespace)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    proxy.faults = Faults(server_error=1.0)
    with pytest.raises(ApiException) as failed:
        core.list_namespaced_pod(namespace)
    assert failed.value.status in (500, 503, 504)
    proxy.faults = Faults(reset=1.0)
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_pod(namespace)
    proxy.faults = Faults(latency=1.0, delay=0.5)
    began = time.monotonic()
    core.list_namespaced_pod(namespace)
    assert time.monotonic() - began >= 0.5
    proxy.faults = Faults(cut_watches=(0.5, 0.5))
    began = time.monotonic()
    watch = core.list_namespaced_pod(
        namespace, watch=True, timeout_seconds=60, _preload_content=False
    )
    with pytest.raises(urllib3.exceptions.HTTPError):
        for _ in watch.stream(1024):
            pass
    assert time.monotonic() - began < 5  # not the 60 s the API server would hold it
    expected = {"forwarded": 3, "429": 1, str(failed.value.status): 1, "reset": 1, "delayed": 1,
                "watch_cut": 1, "requests": 6}  # fmt: skip
    assert dict(proxy.counts) == expected
    assert proxy.faulted == 5 and proxy.requests == 6
    assert proxy.held == [f"GET /api/v1/namespaces/{namespace}/pods"]
