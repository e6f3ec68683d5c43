"""A control plane with one real node: kubelet, containerd and runc, all in a network
namespace of the run's own, so the kubelet computes Ready, EndpointSlices and PDB health.

The API server listens on the node's address inside the namespace (where the kubelet and the
pods reach it) and is forwarded to a loopback port of the host (where tests, kubectl and helm
reach it). Stopping leaves nothing behind: processes, pod cgroups, /run entries, the namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import IO

from circuitgate_devkit.cluster.control_plane import ControlPlane, ControlPlaneUnavailable
from circuitgate_devkit.cluster.pki import Leaf
from circuitgate_devkit.waiting import TimedOut, eventually

from .images import build_pause_image
from .netns import NetworkNamespace, delete_namespaces
from .runtime import (
    KUBELET_SYSCTLS,
    SERVICE_SUBNET,
    NodeFiles,
    cni_config,
    containerd_config,
    corefile,
    kubelet_config,
)
from .sweep import (
    CGROUP_ROOT,
    RunSnapshot,
    foreign_pod_cgroups,
    kill_node_processes,
    reclaim_empty_pod_cgroups,
    remove_pod_cgroups,
)

__all__ = ("NodeCluster", "NodeUnavailable")

API_PORT = 6443
SERVICE_IP = "10.0.0.1"  # the first address of --service-cluster-ip-range: "kubernetes"
_TOOLS = (
    "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "ip", "iptables",
)  # fmt: skip
_NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "coredns")


class NodeUnavailable(ControlPlaneUnavailable):
    """Something the node needs is missing or would not start; the message says what."""


_LOCK_FILE = Path("/run/circuitgate-node.lock")


def _exclusive_lock() -> IO[str]:
    """One node per machine: kubelets share the pod cgroups, so a second would fight the first
    (and its sweep would kill the first's pods). Held until stop; the kernel drops it if this
    process dies."""
    lock = _LOCK_FILE.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise NodeUnavailable(f"another test node runs on this machine (pid {owner})") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


class NodeCluster(ControlPlane):
    """`ControlPlane` plus a scheduler, every controller, containerd and a kubelet."""

    unavailable = NodeUnavailable

    node_name = "circuitgate-node"

    def __init__(self, bin_dir: Path | None = None, *, startup_timeout: float = 90.0) -> None:
        super().__init__(bin_dir, startup_timeout=startup_timeout)
        self.netns = NetworkNamespace(f"circuitgate-node-{os.getpid()}", routes=(SERVICE_SUBNET,))
        self.node_startup_seconds: float | None = None
        self._run_before: RunSnapshot | None = None
        self._forward_socket: socket.socket | None = None
        self._lock: IO[str] | None = None

    @property
    def address(self) -> str:
        return self.netns.address

    @property
    def files(self) -> NodeFiles:
        return NodeFiles(self._dir / "node")

    @property
    def inner_kubeconfig(self) -> Path:
        """Admin credentials for the API server's address inside the namespace."""
        return self._dir / "kubeconfig-inner"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._lock = _exclusive_lock()
        self._check_prerequisites()
        delete_namespaces(f"{self.node_name}-")  # of earlier nodes that were killed
        began = time.monotonic()
        try:
            self.netns.create()
            self._run_before = RunSnapshot.take()
            super().start()
            self._start_scheduler()
            self._start_service_network()
            self._start_containerd()
            self.load_image(build_pause_image())
            self._start_kubelet()
            self._wait_node_ready(began + self.startup_timeout)
        except BaseException:
            self.stop(keep_workdir=True)  # its logs say why
            raise
        self.node_startup_seconds = time.monotonic() - began

    def stop(self, *, keep_workdir: bool = False) -> None:
        socket_path = self.files.containerd_socket if self.workdir else None
        if socket_path is not None and self._running("kubelet"):
            self._delete_pods()
        super().stop(keep_workdir=True)
        if socket_path is not None:
            kill_node_processes(socket_path)
        remove_pod_cgroups()
        if self._run_before is not None:
            self._run_before.remove_new()
            self._run_before = None
        self.netns.delete()
        if self._forward_socket is not None:
            self._forward_socket.close()
            self._forward_socket = None
        if self.workdir is not None and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _running(self, name: str) -> bool:
        return any(p.name == name and p.popen.poll() is None for p in self._processes)

    def _delete_pods(self) -> None:
        """Let the kubelet stop every pod (CNI DEL frees its address) before the sweep;
        whatever is still there after the wait is killed by it."""
        self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0",
                     "--force", "--wait=false", check=False, timeout=60)  # fmt: skip

        ctr = ["ctr", "--address", str(self.files.containerd_socket), "-n", "k8s.io"]

        def sandboxes_gone() -> bool:
            run = self._run([*ctr, "tasks", "ls", "-q"], check=False, timeout=30)
            return run.returncode == 0 and not run.stdout.strip()

        with contextlib.suppress(TimedOut):
            eventually(sandboxes_gone, timeout=30, interval=0.5, what="every pod torn down")

    def load_image(self, archive: Path) -> None:
        """Import an OCI archive into the node's containerd (pods use imagePullPolicy: Never)."""
        self._run(
            ["ctr", "--address", str(self.files.containerd_socket), "-n", "k8s.io",
             "images", "import", str(archive)],
            check=True, timeout=300,
        )  # fmt: skip

    def container_pids(self, namespace: str, pod: str) -> list[int]:
        """The host pids of a pod's first container: found by its cgroup, which the kubelet
        names by the pod's uid and the container's id (to freeze or kill it from outside)."""
        status = json.loads(self.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
        uid = status["metadata"]["uid"]
        container = status["status"]["containerStatuses"][0]["containerID"].partition("://")[2]
        pids: set[int] = set()
        for procs in CGROUP_ROOT.glob(f"pids/kubepods/**/pod{uid}/{container}/cgroup.procs"):
            pids.update(int(line) for line in procs.read_text().split())
        return sorted(pids)

    # -- the control plane's hooks -----------------------------------------------------------

    def _wrap(self, argv: list[str]) -> list[str]:
        return self.netns.enter(*argv)

    def _leaves(self) -> list[Leaf]:
        node = self.node_name
        return [
            *super()._leaves(),
            Leaf("apiserver", {"CN": "kube-apiserver"}, "server",
                 ips=("127.0.0.1", self.address, SERVICE_IP),
                 dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")),
            Leaf("node", {"O": "system:nodes", "CN": f"system:node:{node}"}, "client"),
            Leaf("kubelet", {"CN": node}, "server", ips=(self.address,), dns=(node,)),
            Leaf("apiserver-kubelet", {"O": "system:masters", "CN": "kube-apiserver-kubelet"},
                 "client"),
        ]  # fmt: skip

    def _listen(self) -> tuple[str, int]:
        """The API server on the node's address; a host loopback port forwarded to it."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self._forward_socket = listener
        self.server = f"https://127.0.0.1:{listener.getsockname()[1]}"
        forward = [
            sys.executable, "-m", "circuitgate_devkit.node.forward",
            "--listen-fd", str(listener.fileno()), "--to", f"{self.address}:{API_PORT}",
        ]  # fmt: skip
        self._spawn("forward", forward, pass_fds=(listener.fileno(),))
        return "0.0.0.0", API_PORT

    def _apiserver_flags(self) -> dict[str, str]:
        pki = self._dir / "pki"
        flags = super()._apiserver_flags()
        flags.update({
            "--advertise-address": self.address,
            "--authorization-mode": "Node,RBAC",
            "--enable-admission-plugins": "NodeRestriction",
            "--kubelet-client-certificate": str(pki / "apiserver-kubelet.crt"),
            "--kubelet-client-key": str(pki / "apiserver-kubelet.key"),
            "--kubelet-certificate-authority": str(pki / "ca.crt"),
            # Reach the kubelet (logs, exec) by its address: the node's name is in no DNS.
            "--kubelet-preferred-address-types": "InternalIP",
        })  # fmt: skip
        flags.pop("--disable-admission-plugins", None)  # real pods get ServiceAccount tokens
        return flags

    def _controller_manager_flags(self) -> dict[str, str]:
        pki = self._dir / "pki"
        flags = super()._controller_manager_flags()
        flags.update({
            # With a kubelet every controller can run, node lifecycle and eviction too.
            "--controllers": "*",
            "--kubeconfig": str(self.inner_kubeconfig),
            "--cluster-signing-cert-file": str(pki / "ca.crt"),
            "--cluster-signing-key-file": str(pki / "ca.key"),
            "--allocate-node-cidrs": "false",
            "--use-service-account-credentials": "true",
            # Not /usr/libexec/kubernetes: nothing of the node is written outside its folder.
            "--flex-volume-plugin-dir": str(self.files.root / "volume-plugins"),
        })  # fmt: skip
        return flags

    def _write_kubeconfig(self) -> None:
        super()._write_kubeconfig()
        inner = f"https://{self.address}:{API_PORT}"
        pki = self._dir / "pki"
        admin = self.kubeconfig.read_text().replace(self.server, inner)
        self.inner_kubeconfig.write_text(admin)
        node = admin.replace(str(pki / "admin."), str(pki / "node."))
        (self._dir / "kubeconfig-node").write_text(node)

    # -- the node ----------------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise NodeUnavailable("a node needs root (network namespace, mounts, cgroups)")
        missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
        missing += [n for n in _NODE_BINARIES if not (self.bin_dir / n).exists()]
        if missing:
            raise NodeUnavailable(
                f"missing for the node: {', '.join(missing)}; `make test` installs them "
                "(bash hack/install-system-packages.sh, bash hack/build-control-plane.sh)"
            )
        reclaim_empty_pod_cgroups()
        if foreign := foreign_pod_cgroups():
            raise NodeUnavailable(
                f"another kubelet's pod cgroups exist: {foreign[0]} (they hold processes, or "
                "a kubelet runs); stop that kubelet and its pods first"
            )

    def _start_scheduler(self) -> None:
        self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={self.inner_kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
        ])  # fmt: skip

    def _start_service_network(self) -> None:
        """kube-proxy (iptables, inside the namespace) and CoreDNS, as host processes of the node:
        what lets pods reach ``kubernetes.default`` and other Services by name."""
        self._spawn("kube-proxy", [
            str(self.bin_dir / "kube-proxy"),
            f"--kubeconfig={self.inner_kubeconfig}",
            "--proxy-mode=iptables",
            f"--hostname-override={self.node_name}",
            "--cluster-cidr=10.88.0.0/16",
            # Pods share one bridge: masquerade so a Service's replies come back through it.
            "--masquerade-all",
            # 0 leaves the conntrack sysctls alone (some are not per namespace).
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
        ])  # fmt: skip
        config = self._dir / "Corefile"
        config.write_text(corefile(address=self.address, kubeconfig=self.inner_kubeconfig))
        self._spawn("coredns", [str(self.bin_dir / "coredns"), "-conf", str(config)])

    def _start_containerd(self) -> None:
        files = self.files
        for folder in (files.containerd_config.parent, files.cni_conf_dir, files.kubelet_dir,
                       files.pod_logs, files.sysctl_dir):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
        files.containerd_config.write_text(containerd_config(files))
        (files.cni_conf_dir / "10-circuitgate.conflist").write_text(cni_config(files))
        (files.root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        # A private mount namespace where files stand over the sysctls the kubelet writes.
        binds = []
        for target, value in KUBELET_SYSCTLS.items():
            source = files.sysctl_dir / target.strip("/").replace("/", "_")
            source.write_text(f"{value}\n")
            binds.append(f"mount --bind {source} {target}")
        script = " && ".join([*binds, f"exec containerd --config {files.containerd_config}"])
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        process = self._spawn("containerd", [*unshare, "sh", "-c", script])
        self._await(
            lambda: "" if files.containerd_socket.exists() else "no socket yet",
            timeout=30,
            what=f"containerd's socket ({process.log})",
        )

    def _start_kubelet(self) -> None:
        files, pki = self.files, self._dir / "pki"
        files.kubelet_config.write_text(kubelet_config(
            files, address=self.address, ca_file=pki / "ca.crt",
            tls=(pki / "kubelet.crt", pki / "kubelet.key"),
        ))  # fmt: skip
        containerd = next(p for p in self._processes if p.name == "containerd")
        self._spawn("kubelet", [
            "nsenter", f"--net={self.netns.path}", f"--mount=/proc/{containerd.popen.pid}/ns/mnt",
            "--", str(self.bin_dir / "kubelet"),
            f"--config={files.kubelet_config}",
            f"--kubeconfig={self._dir / 'kubeconfig-node'}",
            f"--root-dir={files.kubelet_dir}",
            f"--cert-dir={files.kubelet_dir / 'pki'}",
            f"--node-ip={self.address}",
            f"--hostname-override={self.node_name}",
        ], wrap=False)  # fmt: skip

    def _wait_node_ready(self, deadline: float) -> None:
        def node_ready() -> str:
            run = self.kubectl(
                "get", "node", self.node_name, "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False,
            )  # fmt: skip
            status = run.stdout.strip()
            return "" if status == "True" else status or run.stderr.strip() or "no status"

        self._await(node_ready, timeout=deadline - time.monotonic(), what="the node Ready")
