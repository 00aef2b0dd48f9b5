"""Keeps ``port_state_15m``, ``port_state_day`` and ``port_occupancy_spans`` up to date
(migrations 0003, 0005): occupied and charging seconds and the energy that flowed, per port; and
``session_summary`` (migration 0008): each finished session's peak power and first/last SoC, for
the bulk session exports; and ``status_successor`` (0008): the status row after each Faulted/
Unavailable row, which uptime reads instead of looking it up.

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
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter

from schemas.port_state import (
    EARLIEST,
    FAILED_STOP_REASONS,
    LOOKBACK,
    MIN_SUCCESS_WH,
    SESSION_FIGURES_SAMPLES_SQL,
    SESSION_FIGURES_SQL,
    SOLAR_HOURS,
    PortHistory,
    PortKey,
    floor_bucket,
    load_histories,
    port_minutes,
    settled_cuts,
)

logger = logging.getLogger(__name__)

PREFETCH_CONNECTION_WAIT_S = 0.05   # the read-ahead uses a second connection only when one is free
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
            groups = [ports[i:i + ports_per_query] for i in range(0, len(ports), ports_per_query)]
            for b, s, bad in await _pipeline(pool, conn, groups, until, zones):
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


class _Prefetch:
    """Reads the next group's rows on a second connection while this one is computed and written, so
    PostgreSQL and Python work at the same time (the first full roll-up reads a year per port). Without
    a free connection in the pool, or after a failed read, each group reads its own rows as before."""

    def __init__(self, pool: asyncpg.Pool, groups: list[list[tuple[str, int, datetime]]], until: datetime) -> None:
        self._pool, self._groups, self._until = pool, groups, until
        self._conn: PoolConnectionProxy | None = None
        self._task: asyncio.Task[dict[PortKey, PortHistory]] | None = None
        self._next = 0

    async def __aenter__(self) -> _Prefetch:
        if len(self._groups) > 1:
            with contextlib.suppress(TimeoutError):
                self._conn = await self._pool.acquire(timeout=PREFETCH_CONNECTION_WAIT_S)
        return self

    def _start(self, index: int) -> None:
        if self._conn is not None and index < len(self._groups):
            self._task = asyncio.create_task(load_histories(self._conn, self._groups[index], self._until),
                                             name="rollup-prefetch")
            self._next = index

    async def histories(self, index: int) -> dict[PortKey, PortHistory] | None:
        """Group ``index``'s rows if they were read ahead (None: the group reads them), and the next
        group's read started."""
        found = None
        if self._task is not None and self._next == index:
            try:
                found = await self._task
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                logger.info("roll-up read-ahead failed, reading group by group: %s", exc)
                await self._release()
            self._task = None
        self._start(index + 1)   # (the first group reads its own rows while the second one is read ahead)
        return found

    async def _release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await self._task
            self._task = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._pool.release(conn)

    async def __aexit__(self, *exc: object) -> None:
        await self._release()


async def _pipeline(pool: asyncpg.Pool, conn: asyncpg.Connection | PoolConnectionProxy,
                    groups: list[list[tuple[str, int, datetime]]], until: datetime,
                    zones: dict[tuple[str, int], str]) -> list[tuple[int, int, list[tuple[str, int, datetime]]]]:
    """Every group's recompute, as a pipeline when a second connection is free: group i + 2 is read
    (there), group i + 1 computed (in a thread, off the event loop) and group i written (here) at
    once, so PostgreSQL and Python work side by side; otherwise one group after another."""
    out = []
    async with _Prefetch(pool, groups, until) as ahead:
        writing: tuple[list[tuple[str, int, datetime]], asyncio.Task[tuple[int, int]]] | None = None
        try:
            for i, group in enumerate(groups):
                histories = await ahead.histories(i)
                rows = None
                if histories is not None:
                    with contextlib.suppress(Exception):   # its data: recomputed port by port below
                        rows = await asyncio.to_thread(_rows, group, histories, until)
                if writing is not None:
                    out.append(await _recompute_isolated(conn, writing[0], until, zones, writing[1]))
                    writing = None
                if rows is None:
                    out.append(await _recompute_isolated(conn, group, until, zones))
                else:
                    writing = (group, asyncio.create_task(_write(conn, group, rows, until, zones), name="rollup-write"))
            if writing is not None:
                out.append(await _recompute_isolated(conn, writing[0], until, zones, writing[1]))
                writing = None
        finally:
            if writing is not None:
                writing[1].cancel()
                with contextlib.suppress(BaseException):
                    await writing[1]
    return out


async def _recompute_isolated(conn: asyncpg.Connection | PoolConnectionProxy, group: list[tuple[str, int, datetime]],
                              until: datetime, zones: dict[tuple[str, int], str],
                              done: Awaitable[tuple[int, int]] | None = None,
                              ) -> tuple[int, int, list[tuple[str, int, datetime]]]:
    """Recompute a group (or see its recompute ``done`` already under way); if it fails on its data,
    each port alone, returning the ports that fail."""
    try:
        b, s = await (done if done is not None else _recompute(conn, group, until, zones))
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


# Per-session figures of the bulk session exports (migration 0008 ``session_summary``): the sessions of
# these ports that stopped in [the port's recompute start, until) and lasted at most LOOKBACK (a longer
# one is left to the exports, which compute it from its samples: csms/reporting/session_rows.py), from
# their samples inside [start, stop]. $1–$3 the ports and their starts, $4 until, $5 LOOKBACK.
_SUMMARY_SESSIONS = """
SELECT v.cp, t.uid, t.started_at, t.stopped_at
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(cp, evse, f) CROSS JOIN LATERAL (
    -- OFFSET 0: a range of the port's index per port, never a scan of every session
    SELECT t.transaction_uid AS uid, t.started_at, t.stopped_at FROM transactions t
    WHERE t.charge_point_id = v.cp AND t.evse_id = v.evse AND t.started_at >= v.f - $5::interval
      AND t.started_at < $4 AND t.stopped_at >= v.f AND t.stopped_at < $4
      AND t.stopped_at <= t.started_at + $5::interval
    OFFSET 0) t
"""
_SUMMARY_SPAN_SQL = f"""
SELECT min(q.started_at) AS lo, max(GREATEST(q.started_at, q.stopped_at)) AS hi FROM ({_SUMMARY_SESSIONS}) q
"""
# $6 the charge points, [$7, $8] the sessions' span (constants: only those chunks of samples are read).
_SUMMARY_SQL = f"""
WITH t AS MATERIALIZED ({_SUMMARY_SESSIONS}),
x AS (
    SELECT t.cp, t.uid, {SESSION_FIGURES_SQL}
    FROM t JOIN meter_samples m ON m.charge_point_id = t.cp AND m.transaction_uid = t.uid
        AND m.time >= t.started_at AND m.time <= t.stopped_at
    WHERE m.charge_point_id = ANY($6::text[]) AND m.time >= $7 AND m.time <= $8 AND {SESSION_FIGURES_SAMPLES_SQL}
    GROUP BY 1, 2)
INSERT INTO session_summary AS s (charge_point_id, transaction_uid, started_at, stopped_at, peak_power_w, start_soc,
                                  end_soc)
SELECT t.cp, t.uid, t.started_at, t.stopped_at, x.peak_power_w, x.start_soc, x.end_soc
FROM t LEFT JOIN x ON x.cp = t.cp AND x.uid = t.uid
ON CONFLICT (started_at, charge_point_id, transaction_uid) DO UPDATE SET
    stopped_at = EXCLUDED.stopped_at, peak_power_w = EXCLUDED.peak_power_w,
    start_soc = EXCLUDED.start_soc, end_soc = EXCLUDED.end_soc
"""


# Each Faulted/Unavailable status row's successor (migration 0008 ``status_successor``), per key (a port,
# or a charge point's connector-0 statuses: evse 0) from its recompute start f: for the down rows from the
# last row before f on (only that one can have a successor at or after f, where rows may have been stored)
# up to until, the next row before until. $1–$3 the keys and their starts, $4 until.
_SUCCESSORS_SQL = """
WITH k AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS k(cp, evse, f)),
d AS (
    SELECT DISTINCT x.charge_point_id, x.evse_id, x.time, x.received_at FROM k
    CROSS JOIN LATERAL (
        SELECT COALESCE((SELECT max(y.time) FROM connector_status y
                         WHERE y.charge_point_id = k.cp AND y.evse_id = k.evse AND y.time < k.f), k.f) AS since) b
    CROSS JOIN LATERAL (
        SELECT x.charge_point_id, x.evse_id, x.time, x.received_at FROM connector_status x
        WHERE x.charge_point_id = k.cp AND x.evse_id = k.evse AND x.status IN ('Faulted', 'Unavailable')
          AND x.time >= b.since AND x.time < $4 OFFSET 0) x)
INSERT INTO status_successor AS s (charge_point_id, evse_id, time, received_at, next_time, next_received_at,
                                   next_status, next_error_code)
SELECT d.charge_point_id, d.evse_id, d.time, d.received_at, n.time, n.received_at, n.status, n.error_code
FROM d CROSS JOIN LATERAL (
    SELECT n.time, n.received_at, n.status, n.error_code FROM connector_status n
    WHERE n.charge_point_id = d.charge_point_id AND n.evse_id = d.evse_id AND n.time >= d.time AND n.time < $4
      AND (n.time, n.received_at) > (d.time, d.received_at)
    ORDER BY n.time, n.received_at LIMIT 1) n
ON CONFLICT (charge_point_id, evse_id, time, received_at) DO UPDATE SET
    next_time = EXCLUDED.next_time, next_received_at = EXCLUDED.next_received_at,
    next_status = EXCLUDED.next_status, next_error_code = EXCLUDED.next_error_code
"""


async def _successors(conn: asyncpg.Connection | PoolConnectionProxy, ports: list[tuple[str, int, datetime]],
                      until: datetime) -> None:
    """The ports' and their charge points' (evse 0, from the earliest start among their ports) successors."""
    keys = {(cp, evse): since for cp, evse, since in ports}
    for cp, _, since in ports:
        keys[(cp, 0)] = min(since, keys.get((cp, 0), since))
    await conn.execute(_SUCCESSORS_SQL, [k[0] for k in keys], [k[1] for k in keys], list(keys.values()), until)


async def _summarise_sessions(conn: asyncpg.Connection | PoolConnectionProxy, cps: list[str], evses: list[int],
                              starts: list[datetime], until: datetime) -> None:
    span = await conn.fetchrow(_SUMMARY_SPAN_SQL, cps, evses, starts, until, LOOKBACK)
    if span is not None and span["lo"] is not None:
        await conn.execute(_SUMMARY_SQL, cps, evses, starts, until, LOOKBACK, sorted(set(cps)), span["lo"], span["hi"])


BucketRow = tuple[str, int, datetime, float, float, float]
SpanRow = tuple[str, int, datetime, datetime, float, float | None]


def _rows(ports: list[tuple[str, int, datetime]], histories: dict[PortKey, PortHistory],
          until: datetime) -> tuple[list[BucketRow], list[SpanRow]]:
    """The group's quarter-hour and occupancy rows (pure computation, no I/O)."""
    bucket_rows: list[BucketRow] = []
    span_rows: list[SpanRow] = []
    for cp, evse, since in ports:
        minutes = port_minutes(histories[(cp, evse)], (since, until))
        for b in sorted(minutes.buckets.keys() | minutes.energy.keys()):
            occ, chg = minutes.buckets.get(b, (0.0, 0.0))
            bucket_rows.append((cp, evse, b, occ, chg, minutes.energy.get(b, 0.0)))
        span_rows.extend((cp, evse, s.ended_at, s.started_at, s.charging_s, s.post_charge_idle_s)
                         for s in minutes.spans)
    return bucket_rows, span_rows


async def _recompute(conn: asyncpg.Connection | PoolConnectionProxy, ports: list[tuple[str, int, datetime]],
                     until: datetime, zones: dict[tuple[str, int], str],
                     histories: dict[PortKey, PortHistory] | None = None) -> tuple[int, int]:
    if histories is None:
        histories = await load_histories(conn, ports, until)
    return await _write(conn, ports, _rows(ports, histories, until), until, zones)


async def _write(conn: asyncpg.Connection | PoolConnectionProxy, ports: list[tuple[str, int, datetime]],
                 rows: tuple[list[BucketRow], list[SpanRow]], until: datetime,
                 zones: dict[tuple[str, int], str]) -> tuple[int, int]:
    """The group's rows, days, session figures and status pairs, replacing theirs from each port's start."""
    bucket_rows, span_rows = rows
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
        await _summarise_sessions(conn, cps, evses, starts, until)
        await _successors(conn, ports, until)
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
