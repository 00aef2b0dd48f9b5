"""Recomputing one group of ports for the roll-up (``ingest.rollup``): their quarter-hour and
occupancy rows (``schemas.port_state.port_minutes``), written in one transaction with the
station-local days (``port_state_day``), the finished sessions' figures (``session_summary``) and
the status pairs uptime reads (``status_successor``), each replacing what was there from the
port's recompute start.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.port_state import (
    FAILED_STOP_REASONS,
    LOOKBACK,
    MIN_SUCCESS_WH,
    SESSION_FIGURES_SAMPLES_SQL,
    SESSION_FIGURES_SQL,
    SOLAR_HOURS,
    PortHistory,
    PortKey,
    port_minutes,
)
from schemas.port_state_read import load_histories


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
# one is left to the exports, which compute it from its samples: csms/store/session_rows.py), from
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


def port_rows(ports: list[tuple[str, int, datetime]], histories: dict[PortKey, PortHistory],
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


async def recompute(conn: asyncpg.Connection | PoolConnectionProxy, ports: list[tuple[str, int, datetime]],
                     until: datetime, zones: dict[tuple[str, int], str],
                     histories: dict[PortKey, PortHistory] | None = None) -> tuple[int, int]:
    if histories is None:
        histories = await load_histories(conn, ports, until)
    return await write_rows(conn, ports, port_rows(ports, histories, until), until, zones)


async def write_rows(conn: asyncpg.Connection | PoolConnectionProxy, ports: list[tuple[str, int, datetime]],
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
