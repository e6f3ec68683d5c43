"""Leave nothing behind: what a stopped node's containers and shims would otherwise keep.

containerd's shims and the pods' processes outlive containerd and the kubelet (the shims run
in sessions of their own), the kubelet's pod cgroups stay, and containerd 1.6 writes a few
files to fixed places under /run. The sweep kills and removes only what this node made:
processes in its cgroups or talking to its containerd socket, and /run entries that were
not there before it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = (
    "CGROUP_ROOT",
    "RunSnapshot",
    "foreign_pod_cgroups",
    "kill_node_processes",
    "leftovers",
    "reclaim_empty_pod_cgroups",
    "remove_empty_cgroups",
    "remove_pod_cgroups",
)

CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_CGROUP = "kubepods"
# containerd 1.6 puts these outside its configured root and state (hard-coded paths).
FIXED_RUN_DIRS = (Path("/run/netns"), Path("/run/containerd/s"))


def _pod_cgroup_dirs(name: str = POD_CGROUP) -> list[Path]:
    return [d for d in CGROUP_ROOT.glob(f"*/{name}") if d.is_dir()]


def _kubelet_runs() -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == "kubelet":
                    return True
    return False


def remove_empty_cgroups(name: str) -> list[Path]:
    """Remove the cgroup trees called ``name`` that hold no process; return the removed."""
    empty = [top for top in _pod_cgroup_dirs(name) if not _pids_in(top)]
    for top in empty:
        _remove_tree(top)
    return [top for top in empty if not top.exists()]


def reclaim_empty_pod_cgroups() -> list[Path]:
    """Remove pod cgroups that hold no process while no kubelet runs, and return them.

    A node killed before it could stop (SIGKILL, a machine restored from a snapshot) leaves
    its pod cgroups behind; empty, they are nobody's: a kubelet recreates its own at start.
    """
    return [] if _kubelet_runs() else remove_empty_cgroups(POD_CGROUP)


def foreign_pod_cgroups(name: str = POD_CGROUP) -> list[Path]:
    """Pod cgroups that exist before the node starts and hold processes or belong to a running
    kubelet: another kubelet's, never to be swept."""
    return _pod_cgroup_dirs(name)


def _pids_in(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(line) for line in procs.read_text().split())
    return pids


def _pids_talking_to(socket_path: Path) -> set[int]:
    """The node's shims: ``containerd-shim-runc-v2 ... -address <its containerd socket>``."""
    address = [b"-address", str(socket_path).encode()]
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                pairs = [argv[i : i + 2] for i in range(len(argv) - 1)]
                if argv[0].endswith(b"containerd-shim-runc-v2") and address in pairs:
                    pids.add(int(proc.name))
    return pids


def kill_node_processes(containerd_socket: Path, timeout: float = 10.0) -> None:
    """SIGKILL every pod process and every shim of this node, and wait until they are gone."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _pids_talking_to(containerd_socket)
        for cgroup in _pod_cgroup_dirs():
            pids |= _pids_in(cgroup)
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_pod_cgroups(timeout: float = 10.0) -> list[Path]:
    """rmdir the kubelet's pod cgroups, deepest first, in every hierarchy; return what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for top in _pod_cgroup_dirs():
            _remove_tree(top)
            if top.exists():
                left.append(top)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _remove_tree(top: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs removes the control files)."""
    for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir():
            with contextlib.suppress(OSError):
                directory.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


@dataclass
class RunSnapshot:
    """The entries of containerd's fixed /run folders before the node started."""

    before: dict[Path, set[str]] = field(default_factory=dict)

    @classmethod
    def take(cls) -> RunSnapshot:
        return cls({d: set(os.listdir(d)) if d.is_dir() else set() for d in FIXED_RUN_DIRS})

    def remove_new(self) -> None:
        """Delete what appeared since (sandbox netns files, shim sockets)."""
        for directory, names in self.before.items():
            if not directory.is_dir():
                continue
            for name in set(os.listdir(directory)) - names:
                path = directory / name
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        path.rmdir()
                    else:
                        path.unlink()


def leftovers(containerd_socket: Path, netns: Path) -> list[str]:
    """What a stopped node still holds on the machine: nothing, when the sweep worked."""
    left = [f"process {pid}" for pid in sorted(_pids_talking_to(containerd_socket))]
    left += [str(cgroup) for cgroup in _pod_cgroup_dirs()]
    if netns.exists():
        left.append(str(netns))
    # Host paths the node's components would write by default, moved into its folder.
    for path in (Path("/var/lib/cni/networks/circuitgate-node"), Path("/opt/containerd"),
                 Path("/usr/libexec/kubernetes")):  # fmt: skip
        if path.exists():
            left.append(str(path))
    return left
