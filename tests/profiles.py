"""One switch for every property test: a quick run in ``make test``, and many more examples
with ``HYPOTHESIS_PROFILE=nightly`` (``make nightly``)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
PROFILE = "nightly" if NIGHTLY else "quick"


def property_settings(
    *,
    quick: int,
    nightly: int,
    steps: tuple[int, int] | None = None,
    suppress: tuple[HealthCheck, ...] = (),
) -> settings:
    """Examples (and stateful steps: quick, nightly) for this run; no deadline, because real
    processes and sockets on a loaded 2-core machine make any deadline a coin toss."""
    step_count = {} if steps is None else {"stateful_step_count": steps[NIGHTLY]}
    return settings(
        max_examples=nightly if NIGHTLY else quick,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, *suppress],
        **step_count,
    )
