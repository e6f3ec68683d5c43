"""The command line: parsed once into the configuration, options over environment variables
(so the chart's flags and its ``CIRCUITGATE_*`` variables mean the same as ever)."""

from __future__ import annotations

import pytest

from circuitgate_operator.__main__ import configure, parse_args
from circuitgate_operator.config import OperatorConfig


def test_the_environment_alone_configures_it() -> None:
    env = {
        "CIRCUITGATE_WEBHOOK": "on",
        "CIRCUITGATE_RESYNC_SECONDS": "5",
        "CIRCUITGATE_WEBHOOK_PORT": "8443",
        "CIRCUITGATE_WEBHOOK_SECRET": "circuitgate/webhook-certificate",
        "CIRCUITGATE_STREAM_OPENINGS": "16",
    }
    config = configure(parse_args([]), env)
    assert config == OperatorConfig(
        webhook=True,
        resync_seconds=5.0,
        webhook_port=8443,
        webhook_secret="circuitgate/webhook-certificate",
        stream_openings=16,
    )


def test_no_stream_may_open_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="CIRCUITGATE_STREAM_OPENINGS must be at least 1, not 0"):
        configure(parse_args([]), {"CIRCUITGATE_STREAM_OPENINGS": "0"})


def test_options_win_over_the_environment() -> None:
    env = {
        "CIRCUITGATE_WEBHOOK": "on",
        "CIRCUITGATE_METRICS": "0.0.0.0:1",
        "CIRCUITGATE_API_THREADS": "3",
    }
    args = parse_args(
        [
            "--no-webhook",
            "--metrics",
            "127.0.0.1:9100",
            "--webhook-port",
            "9444",
            "--peering-lifetime",
            "4",
        ]
    )
    config = configure(args, env)
    assert (config.webhook, config.metrics_address, config.webhook_port) == (
        False,
        "127.0.0.1:9100",
        9444,
    )
    assert (config.peering_lifetime, config.api_threads) == (4, 3)
