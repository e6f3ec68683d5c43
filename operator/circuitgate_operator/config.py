"""Operator settings, from ``CIRCUITGATE_*`` environment variables (the options of ``python -m
circuitgate_operator`` override them), so ``kopf run -m circuitgate_operator.handlers`` reads
the same ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ("OperatorConfig",)


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class OperatorConfig:
    metrics_address: str = ""  # host:port of /metrics; empty for none
    webhook: bool = False
    webhook_listen: str = "0.0.0.0"
    webhook_host: str = "127.0.0.1"  # how the API server reaches it (certificate SAN too)
    webhook_port: int = 9443
    webhook_cert_dir: str = ""  # empty: a fresh self-signed certificate in a temp folder
    webhook_name: str = "circuitgate-operator"
    # A ClusterRole of the release that owns the webhook configuration, so the garbage
    # collector deletes it with the release even when the operator cannot (empty: none).
    webhook_owner: str = ""
    # The Secret ("namespace/name") holding the certificate all replicas serve (empty: one of
    # this process's own, which only a single replica can use).
    webhook_secret: str = ""
    peering_lifetime: int = 60
    peering_name: str = "circuitgate"
    max_document_bytes: int = 256 * 1024
    api_threads: int = 16
    # Endpoint watchers reading for the first time at once (connecting until their first
    # event): ten thousand opened together would time out on each other.
    stream_openings: int = 64
    resync_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        default = cls()
        openings = int(env.get("CIRCUITGATE_STREAM_OPENINGS", default.stream_openings))
        if openings < 1:  # none would ever open: every pod unread for good
            raise ValueError(f"CIRCUITGATE_STREAM_OPENINGS must be at least 1, not {openings}")
        return cls(
            metrics_address=env.get("CIRCUITGATE_METRICS", default.metrics_address),
            webhook=_flag(env.get("CIRCUITGATE_WEBHOOK"), default.webhook),
            webhook_listen=env.get("CIRCUITGATE_WEBHOOK_LISTEN", default.webhook_listen),
            webhook_host=env.get("CIRCUITGATE_WEBHOOK_HOST", default.webhook_host),
            webhook_port=int(env.get("CIRCUITGATE_WEBHOOK_PORT", default.webhook_port)),
            webhook_cert_dir=env.get("CIRCUITGATE_WEBHOOK_CERT_DIR", default.webhook_cert_dir),
            webhook_name=env.get("CIRCUITGATE_WEBHOOK_NAME", default.webhook_name),
            webhook_owner=env.get("CIRCUITGATE_WEBHOOK_OWNER", default.webhook_owner),
            webhook_secret=env.get("CIRCUITGATE_WEBHOOK_SECRET", default.webhook_secret),
            peering_lifetime=int(env.get("CIRCUITGATE_PEERING_LIFETIME", default.peering_lifetime)),
            peering_name=env.get("CIRCUITGATE_PEERING_NAME", default.peering_name),
            max_document_bytes=int(
                env.get("CIRCUITGATE_MAX_DOCUMENT_BYTES", default.max_document_bytes)
            ),
            api_threads=int(env.get("CIRCUITGATE_API_THREADS", default.api_threads)),
            stream_openings=openings,
            resync_seconds=float(env.get("CIRCUITGATE_RESYNC_SECONDS", default.resync_seconds)),
        )
