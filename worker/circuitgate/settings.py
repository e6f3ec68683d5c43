"""The ``circuitgate_*`` keys of ``app.conf``, read once and validated at worker start."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from celery.exceptions import ImproperlyConfigured
from kombu.utils.imports import symbol_by_name

from .shared_state import CALLS_KEPT, MAX_WINDOW

__all__ = ("BREAKER_KEYS", "PREFIX", "BreakerSpec", "InvalidSetting", "Settings", "load_settings")

PREFIX = "circuitgate_"


class InvalidSetting(ImproperlyConfigured, ValueError):
    """A ``circuitgate_*`` setting has a value the breaker cannot work with.

    Also a `ValueError`, which is what code building a breaker by hand expects.
    """


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the worker side, with its default. Field name = key without prefix."""

    enabled: bool = True
    """Install the breaker and the consumption gate in this worker."""
    fail_max: int = 5
    """Consecutive counted failures that open the circuit."""
    failure_rate_threshold: float | None = None
    """Also open when this share of the last `window_size` calls failed (None: off)."""
    window_size: int = 20
    """Calls in the sliding window used by `failure_rate_threshold`."""
    min_calls: int = 10
    """Calls the window needs before the failure rate is judged."""
    slow_call_seconds: float | None = None
    """Calls that run longer than this many seconds are slow (None: off), as in Resilience4j:
    a degraded GPU that still answers, only slowly, trips by `slow_call_rate_threshold`."""
    slow_call_rate_threshold: float = 1.0
    """Open when this share of the last `window_size` calls (with at least `min_calls`) were
    slow; a half-open trial that is slow opens the circuit again instead of closing it."""
    reset_timeout: float = 60.0
    """Seconds the circuit stays open after the first trip."""
    backoff_multiplier: float = 2.0
    """Each consecutive trip multiplies the open period by this."""
    max_reset_timeout: float = 600.0
    """The open period never grows past this many seconds."""
    jitter: float = 0.1
    """The open period varies by up to this share either way, so workers do not retry in step."""
    trial_timeout: float = 600.0
    """Seconds after which a half-open trial that never reported is given up on."""
    max_trial_seconds: float = 10800.0
    """Longest a running trial keeps its claim (its heartbeat pushes the deadline on until
    then): a trial that hangs, with no Celery time limit to end it, lets another try after
    this many seconds instead of pausing the worker forever."""
    count_exceptions: tuple[type[BaseException], ...] = ()
    """Only these exceptions count against the breaker (empty: every exception counts)."""
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    """These exceptions never count against the breaker."""
    expose_failure_messages: bool = False
    """Put the message of the last counted failures (one line, at most 200 bytes) in the
    document, next to their exception type, which is always there. Off by default: a message
    can carry data (an input, a path, a token) that the endpoint's readers should not see."""
    handback: bool = True
    """Hand a task whose failure counted back to the queue for another worker."""
    handback_on_shutdown: bool = True
    """On warm shutdown (the SIGTERM Kubernetes sends), hand every message held but not
    started back to the queue at once (SQS: visible at once), not after the running tasks."""
    max_deliveries: int = 3
    """Workers a message may fail on (counted, handed back) before it is poison and fails
    normally, uncounted; also poison after four times this many deliveries in all."""
    guard_all_tasks: bool = True
    """Guard every task unless it sets ``circuitgate=False`` (else only ``circuitgate=True``)."""
    endpoint_enabled: bool = True
    """Serve /circuit, /healthz, /readyz and /metrics from the worker's main process."""
    endpoint_host: str = "0.0.0.0"
    """Address the endpoint listens on (the pod IP must reach it for the operator)."""
    endpoint_port: int = 9808
    """Port of the endpoint (0: any free port, logged at start)."""
    endpoint_max_connections: int = 256
    """Connections served at once; more are answered 503 at once."""
    endpoint_max_wait: float = 60.0
    """Longest long-poll, in seconds."""
    stall_seconds: float = 60.0
    """``/readyz`` answers 503 ``consumer_stalled`` once the consumer's event loop has not
    ticked, or a poll of the broker has gone unanswered past the long poll it asked for (SQS's
    ``wait_time_seconds``), for this long."""
    liveness_seconds: float = 300.0
    """``/healthz`` answers 503 once the consumer's event loop has been stuck this long while
    connected and the broker answers; never for an open circuit, a busy pool or a broker that
    is down or hangs."""
    evidence_calls: int = 100
    """Last calls (of the whole worker, per breaker) that the document's ``recent_calls``
    sums up: count, failures, p50 and p90 durations, for comparing a worker with its peers."""
    evidence_seconds: float = 30.0
    """Longest the served ``recent_calls`` lag the calls: new calls move the document's
    sequence (waking long-polls and streams) at most this often; 0: only with a state change."""
    probe: Callable[[], object] | None = None
    """Checked before each half-open trial (a dotted path or a callable, such as
    ``circuitgate.probes.command("nvidia-smi")``): when an open period ends it runs where a task
    would (a prefork pool process; a thread of its own with solo or threads); raising or
    returning anything false but None keeps the circuit open another period without taking a
    message, anything else lets the trial in. None: the trial itself is the check."""
    probe_timeout: float = 60.0
    """Longest a probe may run (a prefork pool process running it longer is ended); past it, it
    failed."""
    breakers: tuple[BreakerSpec, ...] = ()
    """Breakers bound to queues, as ``{name: {"queues": [...], "fail_max": 3, ...}}``: when one
    opens only its queues pause. Queues bound to none share the ``default`` breaker."""

    def __post_init__(self) -> None:
        # Built by hand (as pybreaker users build a breaker), not through `load_settings`:
        # the same checks, named by field.
        _checked({name: getattr(self, name) for name in _CHECKS}, str)
        _check_relations(self, str)


@dataclasses.dataclass(frozen=True)
class BreakerSpec:
    """A named breaker, the queues it gates, and its settings (the worker's, overridden)."""

    name: str
    queues: tuple[str, ...]
    settings: Settings


BREAKER_KEYS = (
    "fail_max", "failure_rate_threshold", "window_size", "min_calls", "slow_call_seconds",
    "slow_call_rate_threshold", "reset_timeout",
    "backoff_multiplier", "max_reset_timeout", "jitter", "trial_timeout", "max_trial_seconds",
    "count_exceptions", "ignore_exceptions", "handback", "max_deliveries", "probe",
    "probe_timeout",
)  # fmt: skip
"""The settings a breaker entry of ``circuitgate_breakers`` may override."""


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("true or false")


def _host(value: Any) -> str:
    # The endpoint's server binds an IPv4 socket; an IPv6 address would pass here and then
    # fail at worker start.
    allowed = "an IPv4 address such as 0.0.0.0 or 127.0.0.1 (the endpoint listens on IPv4)"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(allowed) from None
    if address.version != 4:
        raise ValueError(allowed)
    return str(value)


def _int_at_least(low: int, high: int | None = None) -> Callable[[Any], int]:
    allowed = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(allowed)
        if value < low or (high is not None and value > high):
            raise ValueError(allowed)
        return value

    return check


def _number(
    *, low: float, high: float | None = None, low_open: bool = False
) -> Callable[[Any], float]:
    bound = f"> {low}" if low_open else f">= {low}"
    allowed = f"a finite number {bound}" + (f" and <= {high}" if high is not None else "")

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(allowed)
        number = float(value)
        if (
            not math.isfinite(number)
            or number < low
            or (low_open and number == low)
            or (high is not None and number > high)
        ):
            raise ValueError(allowed)
        return number

    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as exc:
            raise ValueError(f"None or {exc}") from None

    return optional


def _probe(value: Any) -> Callable[[], object] | None:
    allowed = "None, a callable taking no arguments, or its dotted import path"
    if value is None:
        return None
    try:
        probe = symbol_by_name(value) if isinstance(value, str) else value  # type: ignore[no-untyped-call]
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{allowed} (cannot import {value!r})") from None
    if not callable(probe):
        raise ValueError(f"{allowed} ({value!r} is not callable)")
    return cast("Callable[[], object]", probe)


def _exceptions(value: Any) -> tuple[type[BaseException], ...]:
    allowed = "a list of exception classes or their dotted import paths"
    if isinstance(value, str | type) or not isinstance(value, Iterable):
        raise ValueError(allowed)
    classes = []
    for item in value:
        try:
            cls = symbol_by_name(item) if isinstance(item, str) else item  # type: ignore[no-untyped-call]
        except (ImportError, AttributeError, ValueError):
            raise ValueError(f"{allowed} (cannot import {item!r})") from None
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError(f"{allowed} ({item!r} is not one)")
        classes.append(cls)
    return tuple(classes)


_SECONDS = _number(low=0, low_open=True, high=10_000_000)
"""A duration, at most about 115 days, so no deadline or timer computed from it leaves the
range of a float or of the platform's time_t."""

_PULSE_SECONDS = _number(low=2, high=10_000_000)
"""A consumer's pulse is stamped every second: a bound under two would judge a healthy loop."""

_CHECKS: dict[str, Callable[[Any], Any]] = {
    "enabled": _bool,
    "fail_max": _int_at_least(1),
    "failure_rate_threshold": _optional(_number(low=0, high=1, low_open=True)),
    "window_size": _int_at_least(1, MAX_WINDOW),
    "min_calls": _int_at_least(1, MAX_WINDOW),
    "slow_call_seconds": _optional(_SECONDS),
    "slow_call_rate_threshold": _number(low=0, high=1, low_open=True),
    "reset_timeout": _SECONDS,
    "backoff_multiplier": _number(low=1),
    "max_reset_timeout": _SECONDS,
    "jitter": _number(low=0, high=0.99),
    "trial_timeout": _SECONDS,
    "max_trial_seconds": _SECONDS,
    "count_exceptions": _exceptions,
    "ignore_exceptions": _exceptions,
    "expose_failure_messages": _bool,
    "handback": _bool,
    "handback_on_shutdown": _bool,
    "max_deliveries": _int_at_least(1),
    "guard_all_tasks": _bool,
    "endpoint_enabled": _bool,
    "endpoint_host": _host,
    "endpoint_port": _int_at_least(0, 65535),
    "endpoint_max_connections": _int_at_least(1, 10_000),
    "endpoint_max_wait": _number(low=0, high=3600, low_open=True),
    "stall_seconds": _PULSE_SECONDS,
    "liveness_seconds": _PULSE_SECONDS,
    "probe": _probe,
    "probe_timeout": _SECONDS,
    "evidence_calls": _int_at_least(1, CALLS_KEPT),
    "evidence_seconds": _number(low=0, high=3600),
}


def load_settings(conf: Mapping[str, Any]) -> Settings:
    """Read and check every ``circuitgate_*`` key; raise `InvalidSetting` naming the bad one."""
    known = {PREFIX + field.name for field in dataclasses.fields(Settings)}
    unknown = sorted(key for key in conf if key.startswith(PREFIX) and key not in known)
    if unknown:
        raise InvalidSetting(
            f"unknown setting {unknown[0]}; known settings: {', '.join(sorted(known))}"
        )
    raw = {name: conf[PREFIX + name] for name in _CHECKS if PREFIX + name in conf}
    checked = _checked(raw, lambda name: PREFIX + name)
    _check_relations(_Draft(Settings, checked), lambda name: PREFIX + name)
    settings = Settings(**checked)
    if PREFIX + "breakers" in conf:
        breakers = _breakers(conf[PREFIX + "breakers"], settings)
        settings = dataclasses.replace(settings, breakers=breakers)
    return settings


def _checked(raw: Mapping[str, Any], key: Callable[[str], str]) -> dict[str, Any]:
    values = {}
    for name, value in raw.items():
        try:
            values[name] = _CHECKS[name](value)
        except ValueError as exc:
            raise InvalidSetting(f"{key(name)}={value!r} is invalid: allowed is {exc}") from None
    return values


class _Draft:
    """Settings not built yet: ``changes`` over ``base`` (an instance, or the class's
    defaults), so relations are checked, and named as the caller knows them, first."""

    def __init__(self, base: Settings | type[Settings], changes: Mapping[str, Any]) -> None:
        self._base = base
        self._changes = changes

    def __getattr__(self, name: str) -> Any:
        return self._changes[name] if name in self._changes else getattr(self._base, name)


def _check_relations(settings: Settings | _Draft, key: Callable[[str], str]) -> None:
    if settings.min_calls > settings.window_size:
        raise InvalidSetting(
            f"{key('min_calls')}={settings.min_calls} is invalid: allowed is an integer"
            f" <= {key('window_size')} ({settings.window_size})"
        )
    if settings.max_reset_timeout < settings.reset_timeout:
        raise InvalidSetting(
            f"{key('max_reset_timeout')}={settings.max_reset_timeout} is invalid: allowed is a"
            f" number >= {key('reset_timeout')} ({settings.reset_timeout})"
        )


_BREAKER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")


def _breakers(value: Any, base: Settings) -> tuple[BreakerSpec, ...]:
    setting = PREFIX + "breakers"
    shape = 'a mapping {name: {"queues": [queue, ...], <breaker setting>: value, ...}}'
    if not isinstance(value, Mapping):
        raise InvalidSetting(f"{setting}={value!r} is invalid: allowed is {shape}")
    specs = []
    owner: dict[str, str] = {}
    for name, entry in value.items():
        where = f"{setting}[{name!r}]"
        if not isinstance(name, str) or not _BREAKER_NAME.match(name) or name == "default":
            raise InvalidSetting(
                f"{where} is invalid: a breaker name is lowercase letters, digits, '-', '_'"
                " and '.', at most 63 characters, and not 'default' (the unbound queues' own)"
            )
        if not isinstance(entry, Mapping):
            raise InvalidSetting(f"{where}={entry!r} is invalid: allowed is {shape}")
        extra = sorted(set(entry) - {"queues", *BREAKER_KEYS})
        if extra:
            raise InvalidSetting(
                f"{where}[{extra[0]!r}] is unknown: allowed keys are queues, "
                + ", ".join(BREAKER_KEYS)
            )
        queues = entry.get("queues")
        if (
            isinstance(queues, str)
            or not isinstance(queues, list | tuple)
            or not queues
            or not all(isinstance(queue, str) and queue for queue in queues)
        ):
            raise InvalidSetting(
                f"{where}['queues']={queues!r} is invalid: allowed is a non-empty list of"
                " queue names"
            )
        for queue in queues:
            if queue in owner:
                raise InvalidSetting(
                    f"{where}['queues'] is invalid: queue {queue!r} is already bound to"
                    f" breaker {owner[queue]!r}; a queue has one breaker"
                )
            owner[queue] = name
        overrides = {key: entry[key] for key in BREAKER_KEYS if key in entry}
        label = functools.partial("{}[{!r}]".format, where)
        checked = _checked(overrides, label)
        _check_relations(_Draft(base, checked), label)
        settings = dataclasses.replace(base, **checked)
        specs.append(BreakerSpec(name=name, queues=tuple(queues), settings=settings))
    return tuple(specs)
