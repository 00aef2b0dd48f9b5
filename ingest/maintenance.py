"""Retention and compression, within what the TimescaleDB license allows.

The Apache-2 edition (what Debian builds) has no retention/compression policies or
continuous aggregates. With the community license we add policies; otherwise a
periodic task calls ``drop_chunks`` itself, and we say once in the log that we do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
                                   table, f"{retention_days} days")
                continue
            if not state.get("fallback_logged"):
                logger.info("TimescaleDB license is %r: no retention policies; dropping old chunks "
                            "from the ingest maintenance task instead", lic)
                state["fallback_logged"] = True
            rows = await conn.fetch("SELECT drop_chunks($1::regclass, older_than => $2::interval)",
                                    table, f"{retention_days} days")
            dropped += len(rows)
    return dropped


async def maintenance_loop(pool: asyncpg.Pool, *, retention_days: int, interval_s: float,
                           stop: asyncio.Event) -> None:
    state: dict[str, bool] = {}
    while not stop.is_set():
        try:
            await apply_retention_once(pool, retention_days=retention_days, state=state)
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning("maintenance failed, will retry: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
