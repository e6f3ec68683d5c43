"""Settings: every bad value is refused with the setting's name and what is allowed."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from circuitgate.settings import InvalidSetting, Settings, load_settings
from circuitgate_devkit.paths import HACK

GENERATOR = HACK / "gen_settings_reference.py"


def test_defaults_when_nothing_is_set() -> None:
    assert load_settings({}) == Settings()


def test_named_breakers_override_the_worker_settings() -> None:
    settings = load_settings(
        {
            "circuitgate_fail_max": 7,
            "circuitgate_breakers": {"gpu": {"queues": ["gpu", "gpu-hi"], "fail_max": 2}},
        }
    )
    (gpu,) = settings.breakers
    assert (gpu.name, gpu.queues, gpu.settings.fail_max) == ("gpu", ("gpu", "gpu-hi"), 2)
    assert gpu.settings.reset_timeout == settings.reset_timeout
    assert settings.fail_max == 7


def test_values_are_read_and_exceptions_imported_by_name() -> None:
    settings = load_settings(
        {
            "circuitgate_fail_max": 3,
            "circuitgate_failure_rate_threshold": 0.5,
            "circuitgate_count_exceptions": ["builtins.RuntimeError", OSError],
            "circuitgate_handback": False,
        }
    )
    assert settings.fail_max == 3
    assert settings.failure_rate_threshold == 0.5
    assert settings.count_exceptions == (RuntimeError, OSError)
    assert settings.handback is False


@pytest.mark.parametrize(
    ("conf", "named", "allowed"),
    [
        ({"circuitgate_fail_max": 0}, "circuitgate_fail_max", "integer >= 1"),
        ({"circuitgate_fail_max": "5"}, "circuitgate_fail_max", "integer >= 1"),
        ({"circuitgate_fail_max": True}, "circuitgate_fail_max", "integer >= 1"),
        ({"circuitgate_reset_timeout": 0}, "circuitgate_reset_timeout", "number > 0"),
        ({"circuitgate_jitter": 1.5}, "circuitgate_jitter", "<= 0.99"),
        ({"circuitgate_backoff_multiplier": 0.5}, "circuitgate_backoff_multiplier", ">= 1"),
        (
            {"circuitgate_failure_rate_threshold": 0},
            "circuitgate_failure_rate_threshold",
            "None or",
        ),
        ({"circuitgate_window_size": 5000}, "circuitgate_window_size", "<= 1024"),
        ({"circuitgate_handback": "yes"}, "circuitgate_handback", "true or false"),
        ({"circuitgate_max_deliveries": 0}, "circuitgate_max_deliveries", "integer >= 1"),
        ({"circuitgate_count_exceptions": "ValueError"}, "circuitgate_count_exceptions", "list"),
        (
            {"circuitgate_ignore_exceptions": ["no.such.Error"]},
            "circuitgate_ignore_exceptions",
            "cannot import",
        ),
        ({"circuitgate_ignore_exceptions": [int]}, "circuitgate_ignore_exceptions", "is not one"),
        ({"circuitgate_min_calls": 30}, "circuitgate_min_calls", "circuitgate_window_size"),
        (
            {"circuitgate_reset_timeout": 100, "circuitgate_max_reset_timeout": 10},
            "circuitgate_max_reset_timeout",
            "circuitgate_reset_timeout",
        ),
        ({"circuitgate_fail_maxx": 3}, "circuitgate_fail_maxx", "known settings"),
        (
            {"circuitgate_reset_timeout": 0.5, "circuitgate_max_reset_timeout": 1e308},
            "circuitgate_max_reset_timeout",
            "<= 10000000",
        ),
        ({"circuitgate_trial_timeout": 1e12}, "circuitgate_trial_timeout", "<= 10000000"),
        ({"circuitgate_max_trial_seconds": 0}, "circuitgate_max_trial_seconds", "number > 0"),
        ({"circuitgate_slow_call_seconds": 0}, "circuitgate_slow_call_seconds", "None or"),
        (
            {"circuitgate_slow_call_rate_threshold": 1.5},
            "circuitgate_slow_call_rate_threshold",
            "<= 1",
        ),
        (
            {"circuitgate_breakers": {"gpu": {"queues": ["g"], "slow_call_seconds": -1}}},
            "circuitgate_breakers['gpu']['slow_call_seconds']=-1",
            "None or a finite number > 0",
        ),
        ({"circuitgate_breakers": ["gpu"]}, "circuitgate_breakers", "a mapping"),
        ({"circuitgate_breakers": {"GPU!": {"queues": ["g"]}}}, "['GPU!']", "breaker name"),
        ({"circuitgate_breakers": {"default": {"queues": ["g"]}}}, "['default']", "not 'default'"),
        ({"circuitgate_breakers": {"gpu": {"queues": []}}}, "['gpu']['queues']", "non-empty"),
        ({"circuitgate_breakers": {"gpu": {"queues": "g"}}}, "['gpu']['queues']", "non-empty"),
        (
            {"circuitgate_breakers": {"gpu": {"queues": ["g"], "fail_max": 0}}},
            "circuitgate_breakers['gpu']['fail_max']=0",
            "integer >= 1",
        ),
        (
            {"circuitgate_breakers": {"gpu": {"queues": ["g"], "endpoint_port": 1}}},
            "['gpu']['endpoint_port'] is unknown",
            "allowed keys are queues",
        ),
        (
            {"circuitgate_breakers": {"a": {"queues": ["g"]}, "b": {"queues": ["g"]}}},
            "['b']['queues']",
            "already bound to breaker 'a'",
        ),
    ],
)
def test_invalid_settings_name_the_setting_and_the_allowed_values(
    conf: dict[str, Any], named: str, allowed: str
) -> None:
    with pytest.raises(InvalidSetting) as raised:
        load_settings(conf)
    assert named in str(raised.value)
    assert allowed in str(raised.value)


def test_the_docs_settings_reference_is_generated_from_this_dataclass() -> None:
    spec = importlib.util.spec_from_file_location("gen_settings_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.check(), (
        "docs/reference/settings.md is stale: run python hack/gen_settings_reference.py"
    )


FLOAT_SETTINGS = [
    "failure_rate_threshold",
    "reset_timeout",
    "backoff_multiplier",
    "max_reset_timeout",
    "jitter",
    "trial_timeout",
    "endpoint_max_wait",
    "max_trial_seconds",
    "slow_call_seconds",
    "slow_call_rate_threshold",
    "evidence_seconds",
]


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_for_every_float_setting(name: str, value: float) -> None:
    with pytest.raises(InvalidSetting) as raised:
        load_settings({f"circuitgate_{name}": value})
    assert f"circuitgate_{name}=" in str(raised.value)
    assert "finite" in str(raised.value)
    with pytest.raises(InvalidSetting, match=f"{name}="):  # built by hand, as pybreaker users do
        Settings(**{name: value})


def test_the_endpoint_host_must_be_an_address_the_endpoint_can_bind() -> None:
    """The endpoint binds IPv4 only: "::" used to pass validation, then fail at start."""
    with pytest.raises(InvalidSetting) as raised:
        load_settings({"circuitgate_endpoint_host": "::"})
    assert "circuitgate_endpoint_host='::'" in str(raised.value)
    assert "IPv4" in str(raised.value)
    assert load_settings({"circuitgate_endpoint_host": "127.0.0.1"}).endpoint_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"min_calls": 50, "window_size": 20}, "min_calls"),
        ({"reset_timeout": 900, "max_reset_timeout": 600}, "max_reset_timeout"),
    ],
)
def test_settings_built_by_hand_are_checked_as_a_whole_too(
    values: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidSetting, match=f"^{named}="):
        Settings(**values)


def test_a_hung_trial_is_given_up_after_three_hours_by_default() -> None:
    assert load_settings({}).max_trial_seconds == 3 * 3600
