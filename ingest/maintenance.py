"""Retention and compression, within what the TimescaleDB license allows.

The Apache-2 edition (what Debian builds) has no retention/compression policies or
continuous aggregates. With the community license we add policies (retention, and
compression segmented by charge point); otherwise a periodic task calls ``drop_chunks``
itself, chunks stay uncompressed, and we say once in the log that we do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

logger = logging.getLogger(__name__)

HYPERTABLES = ("meter_samples", "connector_status", "connection_events", "charger_messages")


async def license_of(conn: asyncpg.Connection | PoolConnectionProxy) -> str:
    return str(await conn.fetchval("SELECT current_setting('timescaledb.license', true)") or "apache")


async def apply_retention_once(pool: asyncpg.Pool, *, retention_days: int, state: dict[str, bool]) -> int:
    """Apply retention to every hypertable; return chunks dropped by the fallback path."""
    if retention_days <= 0:
        return 0
    dropped = 0
    async with pool.acquire() as conn:
        lic = await license_of(conn)
        for table in HYPERTABLES:
            if lic == "timescale":
                await conn.execute("SELECT add_retention_policy($1::regclass, $2::interval, if_not_exists => true)",
                                   table, timedelta(days=retention_days))
                continue
            if not state.get("fallback_logged"):
                logger.info("TimescaleDB license is %r: no retention policies; dropping old chunks "
                            "from the ingest maintenance task instead", lic)
                state["fallback_logged"] = True
            rows = await conn.fetch("SELECT drop_chunks($1::regclass, older_than => $2::interval)",
                                    table, timedelta(days=retention_days))
            dropped += len(rows)
    return dropped


async def compression_enabled(conn: asyncpg.Connection | PoolConnectionProxy, table: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT compression_enabled FROM timescaledb_information.hypertables "
        "WHERE format('%I.%I', hypertable_schema, hypertable_name)::regclass = $1::regclass", table))


async def apply_compression_once(pool: asyncpg.Pool, *, state: dict[str, bool],
                                 compress_after_days: int = 7) -> bool:
    """Enable compression and a compression policy on every hypertable; return False where
    the license has no compression (or ``compress_after_days`` is 0: off). Idempotent."""
    if compress_after_days <= 0:
        return False
    async with pool.acquire() as conn:
        lic = await license_of(conn)
        if lic != "timescale":
            if not state.get("compression_logged"):
                logger.info("TimescaleDB license is %r: compression is not available; chunks stay "
                            "uncompressed", lic)
                state["compression_logged"] = True
            return False
        for table in HYPERTABLES:
            if not await compression_enabled(conn, table):  # set once: refused again while chunks are compressed
                await conn.execute(f'ALTER TABLE "{table}" SET (timescaledb.compress, '
                                   "timescaledb.compress_segmentby = 'charge_point_id', "
                                   "timescaledb.compress_orderby = 'time DESC')")
            await conn.execute("SELECT add_compression_policy($1::regclass, $2::interval, if_not_exists => true)",
                               table, timedelta(days=compress_after_days))
    return True


async def maintenance_loop(pool: asyncpg.Pool, *, retention_days: int, interval_s: float,
                           stop: asyncio.Event, compress_after_days: int = 7) -> None:
    state: dict[str, bool] = {}
    while not stop.is_set():
        # Separately: a failing compression set-up must not hold up retention, nor the reverse.
        try:
            await apply_retention_once(pool, retention_days=retention_days, state=state)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("maintenance (retention) failed, will retry: %s", exc)
        try:
            await apply_compression_once(pool, state=state, compress_after_days=compress_after_days)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("maintenance (compression) failed, will retry: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
