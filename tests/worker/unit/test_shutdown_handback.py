"""The shutdown hand-back's own logic: finding the blocked BRPOP's client by its address."""

from __future__ import annotations

import pytest

from circuitgate.shutdown_handback import _address


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (("127.0.0.1", 51234), ("127.0.0.1", 51234)),
        (("::1", 51234, 0, 0), ("::1", 51234)),  # an IPv6 socket's name has four parts
        ("127.0.0.1:51234", ("127.0.0.1", 51234)),
        ("[::1]:51234", ("::1", 51234)),  # how Redis writes an IPv6 client's addr
        ("/run/redis.sock:0", ("/run/redis.sock", 0)),
    ],
)
def test_a_socket_and_redis_name_the_same_client_alike(
    where: str | tuple[object, ...], expected: tuple[str, int]
) -> None:
    assert _address(where) == expected
