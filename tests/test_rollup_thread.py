"""The roll-up runs on its own loop and thread, never on the loop that serves chargers (ingest/rollup_thread.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from ingest import rollup_thread
from ingest.rollup_thread import RollupThread
from schemas.port_state import floor_bucket

WAIT_S = 60.0   # bound on waiting for a state, not a timing assertion


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_S
    while not await check():
        if loop.time() > give_up:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def test_the_refresh_runs_on_another_thread_and_loop_and_stops_on_close(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def recording_loop(pool: asyncpg.Pool, *, interval_s: float, stop: asyncio.Event,
                             port_failures: Any = None) -> None:
        seen["thread"] = threading.get_ident()
        seen["loop"] = asyncio.get_running_loop()
        seen["answer"] = await pool.fetchval("SELECT 41 + 1")
        await stop.wait()
        seen["stopped"] = True

    monkeypatch.setattr(rollup_thread, "rollup_loop", recording_loop)
    rollup = RollupThread(database_url=db_url, interval_s=60.0, connect_timeout_s=10.0)
    rollup.start()
    async def queried() -> bool:
        return "answer" in seen

    await _until(queried, "the roll-up loop queried its own pool")
    assert seen["thread"] != threading.get_ident()
    assert seen["loop"] is not asyncio.get_running_loop()
    assert seen["answer"] == 42
    await rollup.close()
    assert seen["stopped"] is True
    assert rollup.ended


async def test_close_before_the_thread_got_going_ends_it(db_url: str) -> None:
    rollup = RollupThread(database_url=db_url, interval_s=60.0, connect_timeout_s=10.0)
    rollup.start()
    assert not rollup.ended
    await rollup.close()   # returns: the thread saw the stop however early it came
    assert rollup.ended


async def test_the_real_roll_up_advances_its_watermark_from_the_thread(db_url: str, db: asyncpg.Connection) -> None:
    floor = floor_bucket(datetime.now(UTC))
    rollup = RollupThread(database_url=db_url, interval_s=3600.0, connect_timeout_s=10.0)
    rollup.start()
    async def advanced() -> bool:
        mark = await db.fetchval("SELECT rolled_until FROM port_state_watermark")
        return mark is not None and mark >= floor

    try:
        await _until(advanced, "the roll-up advanced its watermark to the last quarter hour")
    finally:
        await rollup.close()
