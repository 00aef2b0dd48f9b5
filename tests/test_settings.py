"""Settings: defaults, environment, flags, validation; the README table matches the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from csms.cli import build_parser, settings_from
from schemas.settings import SETTINGS_FIELDS, Settings, SettingsError, env_name, flag_name, load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_need_no_configuration() -> None:
    s = load_settings(environ={})
    assert s.database_url is None
    assert s.mqtt_url is None
    assert (s.ocpp_port, s.http_port, s.data_dir) == (9000, 8080, Path(".csms"))


def test_environment_then_flags_win() -> None:
    env = {"CSMS_OCPP_PORT": "9100", "CSMS_HTTP_PORT": "8100", "CSMS_PING_INTERVAL_S": "5.5"}
    args = build_parser().parse_args(["run", "--http-port", "8200"])
    s = settings_from(args, env)
    assert s.ocpp_port == 9100
    assert s.http_port == 8200
    assert s.ping_interval_s == 5.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CSMS_OCPP_PORT": "http"}, "cannot read"),
        ({"CSMS_HTTP_PORT": "70000"}, "TCP port"),
        ({"CSMS_OCPP_PATH": "ocpp"}, "start with '/'"),
        ({"CSMS_API_TOKEN": "short"}, "at least 16"),
        ({"CSMS_DB_POOL_MIN": "5", "CSMS_DB_POOL_MAX": "2"}, "db_pool_min"),
        ({"CSMS_LOG_LEVEL": "LOUD"}, "log_level"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=env)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.ocpp_port = 1  # type: ignore[misc]


def test_every_limit_and_timeout_names_its_unit() -> None:
    for field in SETTINGS_FIELDS:
        if any(word in field.name for word in ("timeout", "interval", "delay")):
            assert re.search(r"_(s|ms)$", field.name), field.name
        if field.name.startswith("max_") and "frame" in field.name:
            assert field.name.endswith("_bytes"), field.name


def test_readme_lists_every_setting_with_flag_env_and_default() -> None:
    text = README.read_text("utf-8")
    for field in SETTINGS_FIELDS:
        row = f"| `{flag_name(field.name)}` | `{env_name(field.name)}` |"
        assert row in text, f"README configuration table lacks {field.name}"
