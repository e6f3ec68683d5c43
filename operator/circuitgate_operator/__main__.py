"""``python -m circuitgate_operator`` / ``circuitgate-operator``: run the operator.

Options become ``CIRCUITGATE_*`` environment variables before the handlers are imported, so
``kopf run -m circuitgate_operator.handlers`` with those variables behaves the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
from collections.abc import Sequence

import kopf

__all__ = ("main",)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="circuitgate-operator",
        description="Watch Celery workers' circuit breakers and act on them in the cluster.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="serve this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve all (default)")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone", action="store_true", help="no peering: the only replica (tests, dev)"
    )
    peering.add_argument(
        "--peering",
        default=None,
        metavar="NAME",
        help="kopf peering object the replicas share, required to exist: this replica stays "
        "paused until it has seen its peers (default: 'circuitgate' if it exists)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live replica acts (default: random, so two "
        "replicas never tie, which in kopf would pause both)",
    )
    parser.add_argument("--peering-lifetime", type=int, default=None, metavar="SECONDS")
    parser.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--metrics", default=None, metavar="HOST:PORT", help="serve /metrics")
    parser.add_argument("--webhook", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--webhook-host", default=None, help="how the API server reaches us")
    parser.add_argument("--webhook-port", type=int, default=None)
    parser.add_argument("--webhook-listen", default=None, help="address to listen on")
    parser.add_argument("--webhook-cert-dir", default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _export(args: argparse.Namespace) -> None:
    values = {
        "CIRCUITGATE_METRICS": args.metrics,
        "CIRCUITGATE_PEERING_LIFETIME": args.peering_lifetime,
        "CIRCUITGATE_WEBHOOK": None if args.webhook is None else ("on" if args.webhook else "off"),
        "CIRCUITGATE_WEBHOOK_HOST": args.webhook_host,
        "CIRCUITGATE_WEBHOOK_PORT": args.webhook_port,
        "CIRCUITGATE_WEBHOOK_LISTEN": args.webhook_listen,
        "CIRCUITGATE_WEBHOOK_CERT_DIR": args.webhook_cert_dir,
    }
    for key, value in values.items():
        if value is not None:
            os.environ[key] = str(value)


def _raise_file_limit() -> None:
    """One connection per watched pod: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    _export(args)
    _raise_file_limit()
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler call at INFO: per pod event, far too much at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    from . import handlers  # noqa: F401  (registers the handlers with kopf)

    priority = args.priority if args.priority is not None else random.randint(1, 2**31 - 1)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        peering_name=args.peering,
        priority=priority,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
