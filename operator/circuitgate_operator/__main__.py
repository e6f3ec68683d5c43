"""``python -m circuitgate_operator`` / ``circuitgate-operator``: run the operator.

The configuration is parsed here, once: the ``CIRCUITGATE_*`` environment variables, which
the options override, handed to the handlers through kopf's memo. ``kopf run -m
circuitgate_operator.handlers`` reads the same variables.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import random
import resource
from collections.abc import Mapping, Sequence

import kopf
import uvloop

from .config import OperatorConfig

__all__ = ("configure", "main", "parse_args")


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


def configure(args: argparse.Namespace, env: Mapping[str, str]) -> OperatorConfig:
    """The environment's configuration with the options given on the command line."""
    options = {
        "metrics_address": args.metrics,
        "peering_lifetime": args.peering_lifetime,
        "webhook": args.webhook,
        "webhook_host": args.webhook_host,
        "webhook_port": args.webhook_port,
        "webhook_listen": args.webhook_listen,
        "webhook_cert_dir": args.webhook_cert_dir,
    }
    given = {key: value for key, value in options.items() if value is not None}
    return dataclasses.replace(OperatorConfig.from_env(env), **given)


def _raise_file_limit() -> None:
    """One connection per watched pod: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    config = configure(args, os.environ)
    _raise_file_limit()
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler call at INFO: per pod event, far too much at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    from . import handlers  # noqa: F401  (registers the handlers with kopf)

    priority = args.priority if args.priority is not None else random.randint(1, 2**31 - 1)
    # uvloop, as ``kopf run`` picks it too: one connection per watched pod makes the event
    # loop's own cost most of the operator's at ten thousand pods.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        kopf.run(
            loop=runner.get_loop(),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=args.peering,
            priority=priority,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(config=config),
        )


if __name__ == "__main__":
    main()
