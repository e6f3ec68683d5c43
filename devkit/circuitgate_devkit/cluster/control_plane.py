"""A real etcd + kube-apiserver (+ kube-controller-manager) on loopback, for tests."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

from circuitgate_devkit.cluster.pki import Leaf, write_pki
from circuitgate_devkit.paths import HACK
from circuitgate_devkit.ports import free_port
from circuitgate_devkit.waiting import TimedOut, eventually

__all__ = [
    "CONTROLLERS",
    "CommandFailed",
    "ControlPlane",
    "ControlPlaneUnavailable",
    "default_bin_dir",
    "missing_binaries",
    "pinned_versions",
]

VERSIONS_FILE = HACK / "control-plane.env"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")

# Only what tests without a kubelet need. Left out on purpose: node-lifecycle-controller and
# taint-eviction-controller, which would taint and evict because no Node ever reports Ready.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "disruption-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
)

_PR_SET_PDEATHSIG = 1
_WORKDIR_PREFIX = "circuitgate-cp-"


class ControlPlaneUnavailable(RuntimeError):
    """The binaries are missing or the control plane did not become ready."""


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl or helm run that failed; unlike its base class, shows what it printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr or ''}".rstrip()


def pinned_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The KEY=value pairs of hack/control-plane.env, which the build script sources too."""
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("\"'")
    return versions


def default_bin_dir() -> Path:
    """Where hack/build-control-plane.sh puts the binaries of the pinned version."""
    cache = os.environ.get("CIRCUITGATE_CACHE") or str(Path.home() / ".cache" / "circuitgate")
    return Path(cache) / "bin" / pinned_versions()["K8S_VERSION"]


def missing_binaries(bin_dir: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the test process dies without cleanup."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _remove_orphaned_workdirs() -> None:
    """Delete work folders left by test runs that were killed before they could clean up."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(workdir, ignore_errors=True)
        except PermissionError:
            continue


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float) -> None:
        """SIGTERM to the process group, SIGKILL after grace seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # Also reaps anything the process left in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager in a temporary folder on loopback.

    The admin identity is a client certificate in ``system:masters``; ``kubeconfig`` points at
    it. There is no kubelet and no scheduler: Pods and Nodes are plain API objects. Each
    process runs in its own process group and is killed with its parent, so a crashed test
    run leaves nothing behind.
    """

    unavailable: type[ControlPlaneUnavailable] = ControlPlaneUnavailable
    """What a failed start raises (a subclass narrows it)."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        controller_manager: bool = True,
        startup_timeout: float = 60.0,
    ) -> None:
        self.bin_dir = bin_dir or default_bin_dir()
        self.controller_manager = controller_manager
        self.startup_timeout = startup_timeout
        self.workdir: Path | None = None
        self.server = ""
        self.startup_seconds: float | None = None
        self._processes: list[_Process] = []
        self._etcd_url = ""
        self._apiserver_address = ("127.0.0.1", 0)

    # -- paths -------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self._dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self._dir / "pki" / "ca.crt"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneUnavailable("control plane not started")
        return self.workdir

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneUnavailable(
                f"control plane binaries missing in {self.bin_dir}: {', '.join(missing)}; "
                "build them with `make control-plane` (bash hack/build-control-plane.sh)"
            )
        began = time.monotonic()
        _remove_orphaned_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        atexit.register(self.stop)
        try:
            self._write_pki()
            self._etcd_url = self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._wait_ready(began + self.startup_timeout)
            if self.controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop(keep_workdir=True)
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self, *, keep_workdir: bool = False) -> None:
        """Stop the controller manager, then the apiserver, then etcd (the apiserver hangs
        for a long time if etcd goes first)."""
        while self._processes:
            process = self._processes.pop()
            process.stop(grace=10.0 if process.name == "etcd" else 5.0)
        if self.workdir is not None and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as cluster admin; with check, raise on failure with stderr."""
        return self._run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            input=input,
            timeout=timeout,
        )

    def helm(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm as cluster admin, with its caches inside the work folder."""
        env = {
            "HELM_CACHE_HOME": str(self._dir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self._dir / "helm" / "config"),
            "HELM_DATA_HOME": str(self._dir / "helm" / "data"),
        }
        return self._run(
            [str(self.bin_dir / "helm"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            timeout=timeout,
            env=env,
        )

    def api_client(self) -> ApiClient:
        """A new kubernetes ApiClient with admin credentials; the caller closes it."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def _run(
        self,
        argv: list[str],
        *,
        check: bool,
        timeout: float,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
        return result

    # -- start-up steps ----------------------------------------------------------------------

    def _leaves(self) -> list[Leaf]:
        """The certificates to issue: the admin (in ``system:masters``, the group RBAC lets
        do anything) and the API server's, for loopback and the in-cluster name."""
        return [
            Leaf("admin", {"O": "system:masters", "CN": "circuitgate-admin"}, "client"),
            Leaf("apiserver", {"CN": "kube-apiserver"}, "server",
                 ips=("127.0.0.1",), dns=("localhost", "kubernetes.default.svc")),
        ]  # fmt: skip

    def _write_pki(self) -> None:
        pki = self._dir / "pki"
        pki.mkdir()
        write_pki(pki, self._leaves())

    def _wrap(self, argv: list[str]) -> list[str]:
        """The command line a process is started with: ``argv`` itself here; a subclass may
        run it inside a namespace."""
        return argv

    def _spawn(
        self, name: str, argv: list[str], *, pass_fds: Sequence[int] = (), wrap: bool = True
    ) -> _Process:
        log = self._dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                self._wrap(argv) if wrap else argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                pass_fds=pass_fds,
            )
        process = _Process(name, popen, log)
        self._processes.append(process)
        return process

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={self._dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return client_url

    def _listen(self) -> tuple[str, int]:
        """The address and port the API server binds; sets ``server``, the URL clients use."""
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        return "127.0.0.1", port

    def _apiserver_flags(self) -> dict[str, str]:
        pki = self._dir / "pki"
        host, port = self._apiserver_address
        return {
            "--etcd-servers": self._etcd_url,
            "--cert-dir": str(self._dir / "apiserver-certs"),
            "--tls-cert-file": str(pki / "apiserver.crt"),
            "--tls-private-key-file": str(pki / "apiserver.key"),
            "--client-ca-file": str(pki / "ca.crt"),
            "--secure-port": str(port),
            "--bind-address": host,
            "--advertise-address": "127.0.0.1",
            "--service-cluster-ip-range": "10.0.0.0/24",
            "--authorization-mode": "RBAC",
            "--service-account-issuer": "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file": str(pki / "sa.pub"),
            "--service-account-signing-key-file": str(pki / "sa.key"),
            "--allow-privileged": "true",
            "--disable-admission-plugins": "ServiceAccount",
        }

    def _start_binary(self, name: str, flags: Mapping[str, str]) -> _Process:
        """Start the built binary ``name`` with ``--flag=value`` for each of ``flags``."""
        argv = [str(self.bin_dir / name), *(f"{flag}={value}" for flag, value in flags.items())]
        return self._spawn(name, argv)

    def _start_apiserver(self) -> None:
        self._apiserver_address = self._listen()
        self._start_binary("kube-apiserver", self._apiserver_flags())

    def _controller_manager_flags(self) -> dict[str, str]:
        pki = self._dir / "pki"
        return {
            "--kubeconfig": str(self.kubeconfig),
            "--controllers": ",".join(CONTROLLERS),
            "--service-account-private-key-file": str(pki / "sa.key"),
            "--root-ca-file": str(pki / "ca.crt"),
            "--leader-elect": "false",
            "--bind-address": "127.0.0.1",
            "--secure-port": "0",
        }

    def _start_controller_manager(self) -> None:
        process = self._start_binary("kube-controller-manager", self._controller_manager_flags())
        # It has no readiness endpoint with --secure-port=0; catch a bad flag at once.
        time.sleep(0.3)
        if process.popen.poll() is not None:
            raise ControlPlaneUnavailable(
                f"kube-controller-manager exited with {process.popen.returncode}:\n{process.tail()}"
            )

    def _write_kubeconfig(self) -> None:
        pki = self._dir / "pki"
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: circuitgate-test
  cluster:
    server: {self.server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: circuitgate-test
  context:
    cluster: circuitgate-test
    user: admin
    namespace: default
current-context: circuitgate-test
"""
        )

    def _await(self, probe: Callable[[], str], *, timeout: float, what: str) -> None:
        """Until ``probe`` answers "" (it returns what it saw otherwise); one of our processes
        exiting, or the timeout, fails at once with its log or the last thing seen."""
        seen = ["nothing yet"]

        def ready() -> bool:
            for process in self._processes:
                if process.popen.poll() is not None:
                    raise self.unavailable(
                        f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                    )
            seen[0] = probe()
            return not seen[0]

        try:
            eventually(ready, timeout=timeout, interval=0.1, what=what)
        except TimedOut:
            raise self.unavailable(
                f"{what}: not within {timeout:.0f} s ({seen[0]}); logs in {self.workdir}"
            ) from None

    def _wait_ready(self, deadline: float) -> None:
        pki = self._dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

        def readyz() -> str:
            try:
                with urllib.request.urlopen(
                    f"{self.server}/readyz", context=context, timeout=2
                ) as response:
                    return "" if response.status == 200 else f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                return f"HTTP {error.code}: {error.read()[:500]!r}"
            except OSError as error:
                return str(error) or "no answer"

        self._await(readyz, timeout=deadline - time.monotonic(), what="kube-apiserver /readyz")
