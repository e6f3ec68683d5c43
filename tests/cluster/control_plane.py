"""A real etcd + kube-apiserver (+ kube-controller-manager) on loopback, for tests."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "CONTROLLERS",
    "CommandFailed",
    "ControlPlane",
    "ControlPlaneUnavailable",
    "default_bin_dir",
    "missing_binaries",
    "pinned_versions",
]

REPO = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO / "hack" / "control-plane.env"
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


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
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
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

    def _write_pki(self) -> None:
        pki = self._dir / "pki"
        pki.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(
            "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=circuitgate-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=pki,
        )  # fmt: skip
        leaves = {
            "admin": ("/O=system:masters/CN=circuitgate-admin", "extendedKeyUsage=clientAuth"),
            "apiserver": (
                "/CN=kube-apiserver",
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
            ),
        }
        for name, (subject, extensions) in leaves.items():
            (pki / f"{name}.ext").write_text(
                f"basicConstraints=critical,CA:FALSE\n"
                f"keyUsage=critical,digitalSignature,keyEncipherment\n{extensions}\n"
            )
            _openssl(
                "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject,
                cwd=pki,
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
                cwd=pki,
            )  # fmt: skip
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        log = self._dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        process = _Process(name, popen, log)
        self._processes.append(process)
        return process

    def _start_etcd(self) -> str:
        client, peer = _free_port(), _free_port()
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

    def _start_apiserver(self, etcd_url: str) -> None:
        pki = self._dir / "pki"
        port = _free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={self._dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
            ],
        )

    def _start_controller_manager(self) -> None:
        pki = self._dir / "pki"
        process = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
            ],
        )
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

    def _wait_ready(self, deadline: float) -> None:
        pki = self._dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        last = "no answer"
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.popen.poll() is not None:
                    raise ControlPlaneUnavailable(
                        f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                    )
            try:
                with urllib.request.urlopen(
                    f"{self.server}/readyz", context=context, timeout=2
                ) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}: {error.read()[:500]!r}"
            except OSError as error:
                last = str(error)
            time.sleep(0.1)
        raise ControlPlaneUnavailable(
            f"kube-apiserver not ready after {self.startup_timeout:.0f} s ({last}); "
            f"logs in {self.workdir}"
        )
