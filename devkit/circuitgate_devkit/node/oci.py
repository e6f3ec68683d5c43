"""Pack a folder as an OCI image archive that ``ctr images import`` loads: no registry, no Docker.

One layer (the folder as a tar), a config naming the entrypoint, a manifest and an index whose
``org.opencontainers.image.ref.name`` / ``io.containerd.image.name`` annotations give the
image its name. Deterministic: the same folder gives the same digest, so callers can cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ("pack_image",)

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _layer(rootfs: Path) -> bytes:
    """The folder as an uncompressed tar with fixed owners and times."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def pack_image(
    rootfs: Path,
    name: str,
    archive: Path,
    *,
    entrypoint: Sequence[str],
    user: str = "",
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
) -> str:
    """Write ``rootfs`` as the image ``name`` to ``archive``; return the manifest digest."""
    layer = _layer(rootfs)
    config = {
        "architecture": _ARCH,
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Env": list(env), "User": user},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        layout = b'{"imageLayoutVersion":"1.0.0"}'
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        tar.addfile(info, io.BytesIO(layout))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _blob(tar, _json(config), "application/vnd.oci.image.config.v1+json"),
            "layers": [_blob(tar, layer, "application/vnd.oci.image.layer.v1.tar")],
        }
        descriptor = _blob(tar, _json(manifest), "application/vnd.oci.image.manifest.v1+json")
        descriptor["annotations"] = {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rpartition(":")[2],
        }
        index = _json({"schemaVersion": 2, "manifests": [descriptor]})
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    return str(descriptor["digest"])
