"""The event_loop setting (issue 15): asyncio or uvloop, both run the same coroutine; anything else is refused."""

from __future__ import annotations

import asyncio

import pytest

from csms.run.event_loop import loop_factory, run
from schemas.settings import SettingsError, load_settings


def _loop_class_name(name: str) -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run(main(), name)
    return seen[0]


def test_default_is_the_standard_loop() -> None:
    assert load_settings(environ={}, cli={}).event_loop == "asyncio"
    assert loop_factory("asyncio") is None
    assert _loop_class_name("asyncio").startswith("asyncio")


def test_uvloop_runs_the_coroutine_on_libuv() -> None:
    pytest.importorskip("uvloop")  # a declared dependency on Linux; absent only where it cannot install
    assert load_settings(environ={"CSMS_EVENT_LOOP": "uvloop"}, cli={}).event_loop == "uvloop"
    assert _loop_class_name("uvloop") == "uvloop"


def test_an_unknown_loop_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="event_loop"):
        loop_factory("trio")
