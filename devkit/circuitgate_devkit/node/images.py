"""The node's images, built here without Docker or a registry and cached by their inputs' hash.

- pause: the Kubernetes pause program, compiled from the source that the pinned
  ``k8s.io/kubernetes`` module carries in the Go module cache;
- a base that looks like the official ``python:3.11-slim`` image (Debian bookworm from
  Debian's packages with debootstrap, a venv at /usr/local so ``python`` and ``pip`` are on
  PATH), standing in for the Dockerfiles' ``PYTHON_IMAGE``;
- the project's own images, built from ``docker/operator.Dockerfile`` and
  ``examples/worker/Dockerfile`` unchanged by ``buildah bud`` (no daemon, no registry).

Package registries are reached from inside the build through the host's CA bundle, mounted
for the build only (this machine reaches them through a proxy whose CA the base lacks);
it is never copied into an image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from circuitgate_devkit.cluster.control_plane import default_bin_dir, pinned_versions
from circuitgate_devkit.paths import REPO

from .oci import pack_image
from .runtime import PAUSE_IMAGE

__all__ = ("build_base_image", "build_dockerfile_image", "build_pause_image", "image_cache")

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA = "/run/host-ca.crt"


def image_cache() -> Path:
    """Next to the control plane's binaries, so `make clean` leaves both and CI reuses both."""
    return default_bin_dir().parent.parent / "images"


def _key(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _run(argv: list[str], what: str, **options: object) -> None:
    run = subprocess.run(argv, capture_output=True, text=True, **options)  # type: ignore[call-overload]
    if run.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({' '.join(argv[:3])} ...):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )


def _pause_source() -> Path:
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    version = pinned_versions()["K8S_VERSION"]
    source = Path(modcache) / f"k8s.io/kubernetes@{version}" / "build/pause/linux/pause.c"
    if not source.exists():
        raise FileNotFoundError(f"{source} missing: `make control-plane` downloads the module")
    return source


def build_pause_image() -> Path:
    """The pause image as an OCI archive, compiled once per source (a static binary, ~800 KB)."""
    source = _pause_source()
    archive = image_cache() / f"pause-{_key(PAUSE_IMAGE, source.read_bytes())}.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="circuitgate-pause-") as work:
        rootfs = Path(work) / "rootfs"
        rootfs.mkdir()
        tag = PAUSE_IMAGE.rpartition(":")[2]
        subprocess.run(
            ["gcc", "-Os", "-Wall", "-static", f"-DVERSION=v{tag}", "-o", str(rootfs / "pause"),
             str(source)],
            check=True, capture_output=True,
        )  # fmt: skip
        partial = archive.with_suffix(f".{os.getpid()}.partial")
        pack_image(rootfs, PAUSE_IMAGE, partial, entrypoint=["/pause"], user="65535:65535")
        shutil.move(partial, archive)
    return archive


def build_base_image() -> Path:
    """The stand-in for ``python:3.11-slim-bookworm``, built once (about 45 s)."""
    archive = image_cache() / f"base-{_key(BASE_SUITE, *BASE_PACKAGES, 'venv:/usr/local')}.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="circuitgate-base-") as work:
        rootfs = Path(work) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             BASE_SUITE, str(rootfs)],
            "debootstrap",
        )  # fmt: skip
        _run(["chroot", str(rootfs), "python3", "-m", "venv", "/usr/local"], "venv")
        for cache in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        partial = archive.with_suffix(f".{os.getpid()}.partial")
        pack_image(
            rootfs,
            "circuitgate.local/python:3.11-slim-bookworm",
            partial,
            entrypoint=[],
            env=(
                "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                # Where builds mount the host's CA bundle; nothing is there at run time.
                f"PIP_CERT={BUILD_CA}",
            ),
        )
        shutil.move(partial, archive)
    return archive


def _context_files(ignorefile: Path) -> list[Path]:
    """The files a build context sends, for the cache key: the ``!`` lines of the ignore file."""
    allowed = [line[1:].rstrip("/") for line in ignorefile.read_text().splitlines()
               if line.startswith("!")]  # fmt: skip
    files: list[Path] = []
    for pattern in allowed:
        path = REPO / pattern
        found = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [f for f in found if f.is_file() and "__pycache__" not in f.parts]
    return files


def build_dockerfile_image(dockerfile: Path, name: str) -> Path:
    """``name`` built from ``dockerfile`` (context: the repository) on the base image."""
    base = build_base_image()
    ignorefile = dockerfile.with_name(dockerfile.name + ".dockerignore")
    inputs = [dockerfile, ignorefile, *_context_files(ignorefile)]
    key = _key(
        base.name, *(str(p.relative_to(REPO)) for p in inputs), *(p.read_bytes() for p in inputs)
    )
    archive = image_cache() / f"{name.rpartition('/')[2].replace(':', '-')}-{key}.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="circuitgate-buildah-") as work:
        storage = ["--storage-driver", "vfs", "--root", f"{work}/root", "--runroot", f"{work}/run"]
        _run(
            ["buildah", *storage, "bud", "--isolation", "chroot", "--pull-never",
             "--ignorefile", str(ignorefile), "-f", str(dockerfile),
             "--build-arg", f"PYTHON_IMAGE=oci-archive:{base}",
             "--volume", f"{HOST_CA}:{BUILD_CA}:ro", "-t", name, str(REPO)],
            f"buildah bud {dockerfile.name}", timeout=1800,
        )  # fmt: skip
        partial = archive.with_suffix(f".{os.getpid()}.partial")
        _run(["buildah", *storage, "push", name, f"oci-archive:{partial}:{name}"], "buildah push")
        shutil.move(partial, archive)
    return archive
