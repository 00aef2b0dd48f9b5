"""Keeps ``port_state_15m``, ``port_state_day`` and ``port_occupancy_spans`` up to date
(migrations 0003, 0005): occupied and charging seconds and the energy that flowed, per port.

The Apache-2 TimescaleDB edition has no continuous aggregates, so this is their stand-in.
Each refresh recomputes, for every registered port, the buckets from the watermark to the
last whole quarter hour, and for ports the writer marked dirty (rows stored behind the
watermark: late, replayed or back-filled data) from the quarter hour of the mark; either
point is moved back to the start of a session running there (energy interpolation looks
ahead, ``schemas.port_state.settled_cuts``). A mark is cleared only if no writer touched it
during the refresh (its version is unchanged), so nothing stored meanwhile is missed. One
refresher runs at a time (advisory lock).

One port's rows can never stop the roll-up for the others: a group of ports that fails is
recomputed port by port, and a port that still fails is logged once, counted
(``RefreshResult.failed_ports``, ``csms_rollup_port_failures_total``), left marked dirty (so
reports compute it from raw rows and the next refresh retries it) while the others move on.
Nothing before 2010 (``schemas.port_state.EARLIEST``) is rolled up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter

from schemas.port_state import (
    EARLIEST,
    FAILED_STOP_REASONS,
    MIN_SUCCESS_WH,
    SOLAR_HOURS,
    floor_bucket,
    load_histories,
    port_minutes,
    settled_cuts,
)

logger = logging.getLogger(__name__)

ROLLUP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"csms-rollup").digest()[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    ran: bool
    rolled_until: datetime | None
    ports: int = 0
    buckets_written: int = 0
    spans_written: int = 0
    seconds: float = 0.0
    failed_ports: int = 0


async def _start(conn: asyncpg.Connection | PoolConnectionProxy, until: datetime) -> datetime:
    """The watermark; on the first run, the first quarter hour with data (from 2010 on)."""
    mark = await conn.fetchval("SELECT rolled_until FROM port_state_watermark")
    if mark is not None:
        return max(min(mark, until), EARLIEST)  # type: ignore[no-any-return]
    known = [t for t in [await conn.fetchval(f"SELECT min({column}) FROM {table} WHERE {column} >= $1", EARLIEST)
                         for table, column in (("connector_status", "time"), ("transaction_events", "time"),
                                               ("transactions", "started_at"))]  # fixed names
             if t is not None]
    return floor_bucket(min(known)) if known else until


# Ports whose recompute failed: logged once until they succeed again (bounded).
_FAILING: set[tuple[str, int]] = set()
_FAILING_MAX = 10_000
# A failed port is retried from where it failed: its dirty mark is kept (or set).
_KEEP_DIRTY = """
INSERT INTO port_state_dirty AS d (charge_point_id, evse_id, since)
SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[])
ON CONFLICT (charge_point_id, evse_id) DO UPDATE SET since = LEAST(d.since, EXCLUDED.since), version = d.version + 1
"""


async def refresh(pool: asyncpg.Pool, *, now: datetime | None = None, ports_per_query: int = 100) -> RefreshResult:
    """Bring the roll-up up to the last whole quarter hour before ``now``."""
    began = time.perf_counter()
    until = floor_bucket(now or datetime.now(UTC))
    failed: list[tuple[str, int, datetime]] = []
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ROLLUP_LOCK_KEY):
            return RefreshResult(ran=False, rolled_until=None)
        try:
            watermark = await _start(conn, until)
            dirty_rows = await conn.fetch("SELECT charge_point_id, evse_id, since, version FROM port_state_dirty")
            by_cp = {r["charge_point_id"]: floor_bucket(max(r["since"], EARLIEST))
                     for r in dirty_rows if r["evse_id"] == 0}
            by_port = {(r["charge_point_id"], r["evse_id"]): floor_bucket(max(r["since"], EARLIEST))
                       for r in dirty_rows if r["evse_id"] != 0}
            marked = []
            zones: dict[tuple[str, int], str] = {}
            for r in await conn.fetch(
                    """SELECT e.charge_point_id, e.evse_id, COALESCE(l.time_zone, 'UTC') AS time_zone FROM evses e
                       JOIN charge_points c ON c.id = e.charge_point_id LEFT JOIN locations l ON l.id = c.location_id
                       ORDER BY 1, 2"""):
                cp, evse = r["charge_point_id"], r["evse_id"]
                zones[(cp, evse)] = r["time_zone"]
                marked.append((cp, evse, min(t for t in (watermark, by_cp.get(cp), by_port.get((cp, evse)))
                                             if t is not None)))
            cuts = await settled_cuts(conn, [p for p in marked if p[2] < until])
            ports = [(cp, evse, cuts[(cp, evse)]) for cp, evse, _ in marked if (cp, evse) in cuts]
            buckets = spans = 0
            for i in range(0, len(ports), ports_per_query):
                group = ports[i:i + ports_per_query]
                b, s, bad = await _recompute_isolated(conn, group, until, zones)
                buckets += b
                spans += s
                failed.extend(bad)
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO port_state_watermark (rolled_until) VALUES ($1)
                       ON CONFLICT (singleton) DO UPDATE SET rolled_until = EXCLUDED.rolled_until""", until)
                await conn.execute(
                    """DELETE FROM port_state_dirty d
                       USING unnest($1::text[], $2::int[], $3::bigint[]) AS v(cp, evse, ver)
                       WHERE d.charge_point_id = v.cp AND d.evse_id = v.evse AND d.version = v.ver""",
                    [r["charge_point_id"] for r in dirty_rows], [r["evse_id"] for r in dirty_rows],
                    [r["version"] for r in dirty_rows])
                if failed:
                    await conn.execute(_KEEP_DIRTY, [f[0] for f in failed], [f[1] for f in failed],
                                       [f[2] for f in failed])
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK_KEY)
    return RefreshResult(True, until, len(ports), buckets, spans, time.perf_counter() - began, len(failed))


async def _recompute_isolated(conn: asyncpg.Connection | PoolConnectionProxy, group: list[tuple[str, int, datetime]],
                              until: datetime, zones: dict[tuple[str, int], str],
                              ) -> tuple[int, int, list[tuple[str, int, datetime]]]:
    """Recompute a group; if it fails on its data, each port alone, returning the ports that fail."""
    try:
        b, s = await _recompute(conn, group, until, zones)
        for cp, evse, _ in group:
            _FAILING.discard((cp, evse))
        return b, s, []
    except (asyncpg.InterfaceError, OSError, asyncpg.PostgresConnectionError):
        raise   # the database is away: the whole refresh is retried by the loop
    except Exception:   # a port's data (a bug, a value out of range) must not stop the others
        if len(group) == 1:
            cp, evse, since = group[0]
            if (cp, evse) not in _FAILING:
                logger.exception("roll-up of port %s/%d from %s failed; it is computed from raw rows and "
                                 "retried at the next refresh", cp, evse, since.isoformat())
                if len(_FAILING) < _FAILING_MAX:
                    _FAILING.add((cp, evse))
            return 0, 0, [group[0]]
    buckets = spans = 0
    failed: list[tuple[str, int, datetime]] = []
    for port in group:
        b, s, bad = await _recompute_isolated(conn, [port], until, zones)
        buckets += b
        spans += s
        failed.extend(bad)
    return buckets, spans, failed


def _local_midnight(moment: datetime, zone: str) -> datetime:
    local = moment.astimezone(ZoneInfo(zone))
    return datetime.combine(local.date(), datetime.min.time(), ZoneInfo(zone)).astimezone(UTC)


# Days are recomputed from a local midnight two days before the roll-up's start for the port:
# a StopTransaction marks its own time, and the session counts (and succeeds or not) on its start day.
SESSION_DAYS_BACK = 2
_DAYS_SQL = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::text[]) AS v(cp, evse, f, tz)),
minutes AS (
    SELECT r.charge_point_id AS cp, r.evse_id AS evse, (r.bucket AT TIME ZONE v.tz)::date AS day, v.tz,
           sum(r.occupied_s) AS occ, sum(r.charging_s) AS chg, sum(r.energy_wh) AS wh,
           COALESCE(sum(r.energy_wh) FILTER (WHERE (r.bucket AT TIME ZONE v.tz)::time >= $8::time
                                              AND (r.bucket AT TIME ZONE v.tz)::time < $9::time), 0) AS solar_wh
    FROM port_state_15m r JOIN v ON r.charge_point_id = v.cp AND r.evse_id = v.evse
    WHERE r.bucket >= v.f AND r.bucket < $5 GROUP BY 1, 2, 3, 4),
sessions AS (
    SELECT t.charge_point_id AS cp, t.evse_id AS evse, (t.started_at AT TIME ZONE v.tz)::date AS day, v.tz,
           count(*) AS n,
           count(*) FILTER (WHERE COALESCE(t.energy_wh, 0) >= $6 AND NOT (COALESCE(t.stop_reason, '') = ANY($7)))
               AS ok
    FROM transactions t JOIN v ON t.charge_point_id = v.cp AND t.evse_id = v.evse
    WHERE t.started_at >= v.f AND t.started_at < $5 GROUP BY 1, 2, 3, 4)
INSERT INTO port_state_day (charge_point_id, evse_id, day, time_zone, occupied_s, charging_s, sessions, successes,
                            energy_wh, energy_solar_wh)
SELECT COALESCE(m.cp, s.cp), COALESCE(m.evse, s.evse), COALESCE(m.day, s.day), COALESCE(m.tz, s.tz),
       COALESCE(m.occ, 0), COALESCE(m.chg, 0), COALESCE(s.n, 0), COALESCE(s.ok, 0), COALESCE(m.wh, 0),
       COALESCE(m.solar_wh, 0)
FROM minutes m FULL JOIN sessions s ON s.cp = m.cp AND s.evse = m.evse AND s.day = m.day
"""


async def _recompute(conn: asyncpg.Connection | PoolConnectionProxy, ports: list[tuple[str, int, datetime]],
                     until: datetime, zones: dict[tuple[str, int], str]) -> tuple[int, int]:
    histories = await load_histories(conn, ports, until)
    bucket_rows: list[tuple[str, int, datetime, float, float, float]] = []
    span_rows: list[tuple[str, int, datetime, datetime, float, float | None]] = []
    for cp, evse, since in ports:
        minutes = port_minutes(histories[(cp, evse)], (since, until))
        for b in sorted(minutes.buckets.keys() | minutes.energy.keys()):
            occ, chg = minutes.buckets.get(b, (0.0, 0.0))
            bucket_rows.append((cp, evse, b, occ, chg, minutes.energy.get(b, 0.0)))
        span_rows.extend((cp, evse, s.ended_at, s.started_at, s.charging_s, s.post_charge_idle_s)
                         for s in minutes.spans)
    cps, evses, starts = [p[0] for p in ports], [p[1] for p in ports], [p[2] for p in ports]
    async with conn.transaction():
        await conn.execute(
            """DELETE FROM port_state_15m r USING unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(cp, evse, w0)
               WHERE r.charge_point_id = v.cp AND r.evse_id = v.evse AND r.bucket >= v.w0 AND r.bucket < $4""",
            cps, evses, starts, until)
        await conn.execute(
            """DELETE FROM port_occupancy_spans r
               USING unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(cp, evse, w0)
               WHERE r.charge_point_id = v.cp AND r.evse_id = v.evse AND r.ended_at >= v.w0 AND r.ended_at < $4""",
            cps, evses, starts, until)
        if bucket_rows:
            await conn.copy_records_to_table(
                "port_state_15m", records=bucket_rows,
                columns=["charge_point_id", "evse_id", "bucket", "occupied_s", "charging_s", "energy_wh"])
        if span_rows:
            await conn.copy_records_to_table(
                "port_occupancy_spans", records=span_rows,
                columns=["charge_point_id", "evse_id", "ended_at", "started_at", "charging_s", "post_charge_idle_s"])
        # Station-local days, whole: from the local midnight before each port's recompute start.
        tzs = [zones[(p[0], p[1])] for p in ports]
        midnights = [_local_midnight(p[2] - timedelta(days=SESSION_DAYS_BACK), tz)
                     for p, tz in zip(ports, tzs, strict=True)]
        await conn.execute(
            """DELETE FROM port_state_day r USING unnest($1::text[], $2::int[], $3::date[]) AS v(cp, evse, d)
               WHERE r.charge_point_id = v.cp AND r.evse_id = v.evse AND r.day >= v.d""",
            cps, evses, [m.astimezone(ZoneInfo(tz)).date() for m, tz in zip(midnights, tzs, strict=True)])
        await conn.execute(_DAYS_SQL, cps, evses, midnights, tzs, until, MIN_SUCCESS_WH, sorted(FAILED_STOP_REASONS),
                           *SOLAR_HOURS)
    return len(bucket_rows), len(span_rows)


async def rollup_loop(pool: asyncpg.Pool, *, interval_s: float, stop: asyncio.Event,
                      port_failures: Counter | None = None) -> None:
    """Refresh every ``interval_s`` until ``stop``; a failed refresh is retried next time.
    ``port_failures`` counts the ports whose recompute failed (each refresh that failed them)."""
    while not stop.is_set():
        try:
            result = await refresh(pool)
            if result.failed_ports and port_failures is not None:
                port_failures.inc(result.failed_ports)
            if result.ran and result.seconds > interval_s / 2:
                logger.warning("roll-up of %d ports took %.1f s (interval %.0f s)", result.ports, result.seconds,
                               interval_s)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("roll-up failed, will retry: %s", exc)
        except Exception:
            # A bug in one refresh must not end the loop for good (reports would then compute
            # ever longer tails from raw rows); it is logged loudly and retried.
            logger.exception("roll-up failed unexpectedly, will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _refresh_once(database_url: str, now: datetime | None) -> RefreshResult:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        return await refresh(pool, now=now)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m ingest.rollup --database-url URL [--now ISO]``: one refresh, its figures as JSON
    (the report benchmark uses it; ``csms`` does not import ``ingest``)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="bring the per-port state roll-up up to date once")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--now", type=datetime.fromisoformat, default=None,
                        help="roll up to the quarter hour before this moment (ISO-8601 with offset)")
    args = parser.parse_args(argv)
    result = asyncio.run(_refresh_once(args.database_url, args.now))
    print(json.dumps({"ran": result.ran, "rolled_until": result.rolled_until.isoformat()
                      if result.rolled_until else None, "ports": result.ports, "buckets": result.buckets_written,
                      "spans": result.spans_written, "seconds": round(result.seconds, 3),
                      "failed_ports": result.failed_ports}))
    return 0 if result.ran else 1


if __name__ == "__main__":
    raise SystemExit(main())
