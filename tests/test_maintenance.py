"""Retention and compression against the real TimescaleDB (the Apache-2 build: no policies)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
import pytest

from ingest.maintenance import (
    HYPERTABLES,
    apply_compression_once,
    apply_retention_once,
    compression_enabled,
    license_of,
    maintenance_loop,
)

pytestmark = pytest.mark.integration

RETENTION_LOG = "no retention policies"
COMPRESSION_LOG = "compression is not available"


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def _anchor() -> datetime:
    """Noon UTC today: ages counted from it keep 40 and 40.1 days in one 1-day chunk at any time of day."""
    return datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


async def _insert_samples(db: asyncpg.Connection, *ages_days: float) -> None:
    now = _anchor()
    await db.executemany(
        "INSERT INTO meter_samples (time, charge_point_id, evse_id, connector_id, measurand, value, unit, "
        "raw_value, raw_unit, received_at) VALUES ($1, 'CP1', 1, 1, 'Energy.Active.Import.Register', $2, 'Wh', "
        "$3, 'Wh', $1)",
        [(now - timedelta(days=age), 1000.0 * age, str(1000.0 * age)) for age in ages_days])


async def _insert_connection_event(db: asyncpg.Connection, age_days: float) -> None:
    await db.execute("INSERT INTO connection_events (time, charge_point_id, event, node_id) "
                     "VALUES ($1, 'CP1', 'connected', 'n1')", datetime.now(UTC) - timedelta(days=age_days))


async def _chunks(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = $1",
                                 table))


async def _sample_ages_days(db: asyncpg.Connection) -> list[int]:
    rows = await db.fetch("SELECT time FROM meter_samples ORDER BY time")
    now = _anchor()
    return [round((now - r["time"]).total_seconds() / 86400) for r in rows]


def _count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records
               if r.name == "ingest.maintenance" and r.levelno == logging.INFO)


async def test_the_harness_runs_the_apache_build(db: asyncpg.Connection) -> None:
    # The tests below exercise the fallback; with the community license they would not.
    assert await license_of(db) == "apache"


async def test_old_chunks_are_dropped_and_recent_rows_stay(pool: asyncpg.Pool, db: asyncpg.Connection,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    await _insert_samples(db, 40, 40.1, 1, 1.1)
    await _insert_connection_event(db, 40)
    await _insert_connection_event(db, 1)
    assert await _chunks(db, "meter_samples") == 2
    assert await _chunks(db, "connection_events") == 2

    caplog.set_level(logging.INFO, logger="ingest.maintenance")
    state: dict[str, bool] = {}
    dropped = await apply_retention_once(pool, retention_days=30, state=state)
    assert dropped == 2   # one chunk of meter_samples, one of connection_events
    assert await _sample_ages_days(db) == [1, 1]
    assert await _chunks(db, "meter_samples") == 1
    assert await db.fetchval("SELECT count(*) FROM connection_events") == 1
    assert _count(caplog, RETENTION_LOG) == 1

    # Again: nothing left to drop, and the fallback is not announced a second time.
    assert await apply_retention_once(pool, retention_days=30, state=state) == 0
    assert await _sample_ages_days(db) == [1, 1]
    assert _count(caplog, RETENTION_LOG) == 1
    assert await db.fetchval("SELECT count(*) FROM timescaledb_information.jobs "
                             "WHERE proc_name = 'policy_retention'") == 0


async def test_a_chunk_reaching_into_the_window_is_kept_whole(pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    # connection_events has 7-day chunks; drop_chunks drops only chunks entirely older than the limit.
    await _insert_connection_event(db, 30)
    chunk = await db.fetchrow("SELECT range_start, range_end FROM timescaledb_information.chunks "
                              "WHERE hypertable_name = 'connection_events'")
    assert chunk is not None
    start, end = chunk["range_start"], chunk["range_end"]
    assert start < datetime.now(UTC) - timedelta(days=30) < end
    await db.execute("INSERT INTO connection_events (time, charge_point_id, event, node_id) "
                     "VALUES ($1, 'CP1', 'connected', 'n1')", start)   # older than 30 days, same chunk
    assert await apply_retention_once(pool, retention_days=30, state={}) == 0
    assert await db.fetchval("SELECT count(*) FROM connection_events") == 2


async def test_retention_zero_drops_nothing(pool: asyncpg.Pool, db: asyncpg.Connection,
                                            caplog: pytest.LogCaptureFixture) -> None:
    await _insert_samples(db, 400, 40, 1)
    caplog.set_level(logging.INFO, logger="ingest.maintenance")
    state: dict[str, bool] = {}
    assert await apply_retention_once(pool, retention_days=0, state=state) == 0
    assert await _sample_ages_days(db) == [400, 40, 1]
    assert await _chunks(db, "meter_samples") == 3
    assert _count(caplog, RETENTION_LOG) == 0
    assert state == {}


async def test_compression_is_a_no_op_on_the_apache_license(pool: asyncpg.Pool, db: asyncpg.Connection,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    await _insert_samples(db, 20, 1)
    caplog.set_level(logging.INFO, logger="ingest.maintenance")
    state: dict[str, bool] = {}
    assert not await apply_compression_once(pool, state=state)
    assert not await apply_compression_once(pool, state=state, compress_after_days=1)
    assert _count(caplog, COMPRESSION_LOG) == 1
    for table in HYPERTABLES:
        assert not await compression_enabled(db, table)
    assert await db.fetchval("SELECT count(*) FROM timescaledb_information.jobs "
                             "WHERE proc_name = 'policy_compression'") == 0
    assert await db.fetchval("SELECT count(*) FROM timescaledb_information.chunks WHERE is_compressed") == 0
    assert await _sample_ages_days(db) == [20, 1]


async def test_compression_off_does_not_even_ask(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ingest.maintenance")
    pool = cast(asyncpg.Pool, object())   # touching it would raise
    assert not await apply_compression_once(pool, state={}, compress_after_days=0)
    assert _count(caplog, COMPRESSION_LOG) == 0


class _TimescaleLicensed:
    """A connection that claims the community license and records what it is asked to run
    (the harness has only the Apache build, which refuses compression outright)."""

    def __init__(self) -> None:
        self.enabled: set[str] = set()
        self.executed: list[tuple[str, tuple[object, ...]]] = []

    async def fetchval(self, query: str, *args: object) -> object:
        if "timescaledb.license" in query:
            return "timescale"
        assert "compression_enabled" in query
        return args[0] in self.enabled

    async def execute(self, query: str, *args: object) -> str:
        self.executed.append((query, args))
        if query.startswith("ALTER TABLE"):
            self.enabled.add(query.split('"')[1])
        return "OK"

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_TimescaleLicensed]:
        yield self


async def test_compression_with_the_community_license_is_enabled_once_with_a_policy() -> None:
    conn = _TimescaleLicensed()
    pool = cast(asyncpg.Pool, conn)
    assert await apply_compression_once(pool, state={})
    alters = [q for q, _ in conn.executed if q.startswith("ALTER TABLE")]
    assert len(alters) == len(HYPERTABLES)
    assert all("timescaledb.compress," in q and "compress_segmentby = 'charge_point_id'" in q
               and "compress_orderby = 'time DESC'" in q for q in alters)
    policies = [args for q, args in conn.executed if "add_compression_policy" in q]
    assert policies == [(table, timedelta(days=7)) for table in HYPERTABLES]
    assert all("if_not_exists => true" in q for q, _ in conn.executed if "add_compression_policy" in q)

    conn.executed.clear()
    assert await apply_compression_once(pool, state={}, compress_after_days=3)
    assert [q for q, _ in conn.executed if q.startswith("ALTER TABLE")] == []   # already enabled
    assert [args for q, args in conn.executed if "add_compression_policy" in q] == \
        [(table, timedelta(days=3)) for table in HYPERTABLES]


async def test_maintenance_loop_applies_retention_and_survives_missing_compression(
        pool: asyncpg.Pool, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    await _insert_samples(db, 40, 1)
    caplog.set_level(logging.INFO, logger="ingest.maintenance")
    stop = asyncio.Event()
    task = asyncio.create_task(maintenance_loop(pool, retention_days=30, interval_s=0.05, stop=stop))
    try:
        deadline = time.monotonic() + 60   # bounded in time, not in a count that a busy machine outruns
        while time.monotonic() < deadline:
            if await _sample_ages_days(db) == [1] and _count(caplog, COMPRESSION_LOG):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)   # a few more rounds
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await _sample_ages_days(db) == [1]
    assert _count(caplog, RETENTION_LOG) == 1
    assert _count(caplog, COMPRESSION_LOG) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
