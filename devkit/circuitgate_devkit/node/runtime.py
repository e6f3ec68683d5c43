"""containerd and the kubelet of the test node: their configuration files and command lines.

Both run in the node's network namespace and in one private mount namespace (containerd's,
which the kubelet joins), so the volumes the kubelet mounts are the ones runc sees, and the
files bind-mounted over the three sysctls the kubelet insists on writing keep it from
changing the machine's settings. Nothing else of the host is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = (
    "KUBELET_SYSCTLS",
    "PAUSE_IMAGE",
    "NodeFiles",
    "cni_config",
    "containerd_config",
    "corefile",
    "kubelet_config",
)

PAUSE_IMAGE = "circuitgate.local/pause:3.10.2"
CNI_BIN_DIR = Path("/usr/lib/cni")
POD_SUBNET = "10.88.0.0/16"
SERVICE_SUBNET = "10.0.0.0/24"
CLUSTER_DOMAIN = "cluster.local"

KUBELET_SYSCTLS = {
    # Every sysctl kubelet's container manager checks at start, at the value it wants: with
    # protectKernelDefaults it fails on a difference instead of writing the machine's.
    "/proc/sys/vm/overcommit_memory": "1",
    "/proc/sys/vm/panic_on_oom": "0",
    "/proc/sys/kernel/panic": "10",
    "/proc/sys/kernel/panic_on_oops": "1",
    "/proc/sys/kernel/keys/root_maxkeys": "1000000",
    "/proc/sys/kernel/keys/root_maxbytes": "25000000",
}


@dataclass(frozen=True)
class NodeFiles:
    """Where one node keeps everything, all inside the run's work folder."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def sysctl_dir(self) -> Path:
        return self.root / "sysctls"


def containerd_config(files: NodeFiles) -> str:
    """containerd 1.6's CRI configuration for the node (config version 2)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{files.containerd_root}"
state = "{files.containerd_state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
  # It would create /opt/containerd on the host.
  "io.containerd.internal.v1.opt",
]

[grpc]
  address = "{files.containerd_socket}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This sandbox lacks CAP_SYS_RESOURCE: runc must not lower its own oom_score_adj.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{files.root / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{files.cni_conf_dir}"
"""


def cni_config(files: NodeFiles) -> str:
    """Pods on a bridge inside the namespace, addresses from host-local IPAM."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "circuitgate-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        # Not /var/lib/cni: the address reservations stay in the node's folder.
                        "dataDir": str(files.root / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def corefile(*, address: str, kubeconfig: Path) -> str:
    """CoreDNS answering for the cluster's names on the node's address; nothing upstream."""
    return f""".:53 {{
    bind {address}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


def kubelet_config(files: NodeFiles, *, address: str, ca_file: Path, tls: tuple[Path, Path]) -> str:
    """The KubeletConfiguration: cgroup v1 with cgroupfs, webhook authn/authz, no read-only port."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine has cgroup v1 only; kubelet 1.36 refuses it unless told.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": f"unix://{files.containerd_socket}",
        "address": address,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(tls[0]),
        "tlsPrivateKeyFile": str(tls[1]),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "failSwapOn": False,
        "protectKernelDefaults": True,
        "volumePluginDir": str(files.root / "volume-plugins"),
        "podLogsDir": str(files.pod_logs),
        "resolvConf": str(files.root / "resolv.conf"),
        "clusterDNS": [address],
        "clusterDomain": CLUSTER_DOMAIN,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "syncFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
    }  # fmt: skip
    return json.dumps(config, indent=2)
