"""Loopback ports and addresses for the processes the dev kit starts."""

from __future__ import annotations

import itertools
import os
import socket

__all__ = ("free_port", "next_loopback")

_addresses = itertools.count(10)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def next_loopback() -> str:
    """A loopback address no other caller in this run uses (127.P.0.12, 127.P.0.13, ...).

    The second octet comes from the pid, so parallel test runs do not share addresses.
    """
    n = next(_addresses)
    return f"127.{(os.getpid() % 200) + 1}.{n // 250}.{n % 250 + 2}"
