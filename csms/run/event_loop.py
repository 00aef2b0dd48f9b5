"""The event loop a long-running role runs on (setting ``event_loop``): the standard library's asyncio
loop, or uvloop (libuv; the raw websocket round trip costs less CPU there, performance-facts §0: 29k/s
asyncio against 42k/s uvloop per core). Same program either way; uvloop is optional at run time: asking
for it where it is not installed is a settings error, not a silent fallback."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any

from schemas.settings import SettingsError

EVENT_LOOPS = ("asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``asyncio.Runner`` loop factory of ``name`` (None = asyncio's default loop)."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            raise SettingsError("event_loop uvloop: the uvloop package is not installed") from exc
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise SettingsError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")


def run(main: Coroutine[Any, Any, None], name: str) -> None:
    """``asyncio.run(main)`` on the loop ``name`` names."""
    factory = loop_factory(name)
    if factory is None:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)
