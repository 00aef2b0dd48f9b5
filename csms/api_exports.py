"""Regulatory exports under ``/api/v1/reporting/exports``: India's quarterly site energy
statement and the sessions CSV (generic, or the EV Charging Use Spec session table).

The statement does its heavy lifting in SQL, every site in one pass: sessions wholly inside
the quarter and on one side of 09:00/16:00 are summed from the transactions table alone
(:data:`SESSIONS_ENERGY_SQL`); the register samples of the others are differenced with window
functions (:data:`STEPS_ENERGY_SQL`), and only the differences that straddle 09:00, 16:00 or a
quarter boundary come back to Python, where :func:`csms.reporting.energy_statement.split` cuts
them. The sessions CSV is streamed from a server-side cursor, a batch at a time, so a 400-day
export never sits in memory.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from csms.reporting import FORMULA_VERSION, energy_statement, evchart
from schemas.events import (
    FLAG_ANCIENT_TIMESTAMP,
    FLAG_CONNECTOR_ZERO_TOTAL,
    FLAG_FUTURE_TIMESTAMP,
    FLAG_IMPLAUSIBLE_UNIT,
    FLAG_OUTSIDE_TRANSACTION,
    FLAG_REGISTER_DECREASED,
    FLAG_UNPARSEABLE_VALUE,
)

MAX_WINDOW = timedelta(days=400)
MAX_RATE_PER_KWH = 1000.0
EARLIEST_YEAR, LATEST_YEAR = 2010, 2100
SESSION_BATCH_ROWS = 2000
LocationIds = Annotated[list[str] | None, Query(max_length=1000)]
# Ranges are documented in the schema (json_schema_extra) but checked by the handler, so that a value
# out of range gets a 400 with a sentence, like the project's other request checks, not a 422.

_CSV = {"text/csv": {"schema": {"type": "string"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid parameters (the detail says which)"},
    404: {"description": "Unknown location"},
}


class SolarWindow(BaseModel):
    start: str
    end: str


class SiteEnergy(BaseModel):
    location_id: str
    name: str
    time_zone: str
    period_start_utc: str
    period_end_utc: str
    period_start_local: str
    period_end_local: str
    period_complete: bool
    energy_kwh: float
    solar_kwh: float
    non_solar_kwh: float
    sessions: int
    sessions_carried_in: int
    land_share_amount: float


class Totals(BaseModel):
    energy_kwh: float
    solar_kwh: float
    non_solar_kwh: float
    sessions: int
    sessions_carried_in: int
    land_share_amount: float


class SiteEnergyStatement(BaseModel):
    report: Literal["india_site_energy_statement"]
    formula_version: str
    generated_at: str
    year: int
    quarter: int
    quarter_convention: Literal["calendar", "fiscal_in"]
    period: str
    solar_window_local: SolarWindow
    currency: Literal["INR"]
    land_share_rate_per_kwh: float
    land_share_basis: str
    energy_attribution: str
    sites: list[SiteEnergy]
    totals: Totals


STATEMENT_COLUMNS = (
    "location_id", "location_name", "time_zone", "period", "period_start_utc", "period_end_utc",
    "period_start_local", "period_end_local", "period_complete", "energy_kwh", "solar_kwh", "non_solar_kwh",
    "sessions", "sessions_carried_in", "land_share_rate_per_kwh", "land_share_amount", "currency",
    "formula_version", "generated_at")
LAND_SHARE_BASIS = ("MoP Guidelines for Installation and Operation of EV Charging Infrastructure-2024 "
                    "(17 Sep 2024): revenue share per kWh of energy sold, paid quarterly to the land-owning agency")


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bad(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _csv_response(body: bytes, filename: str) -> Response:
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def _locations(db: asyncpg.Pool, ids: list[str] | None) -> list[asyncpg.Record]:
    """The requested locations (all when ``ids`` is empty), or 404 naming the unknown ones."""
    if ids:
        rows = await db.fetch("SELECT id, name, time_zone FROM locations WHERE id = ANY($1::text[]) ORDER BY id",
                              list(dict.fromkeys(ids)))
        missing = sorted(set(ids) - {r["id"] for r in rows})
        if missing:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no location {', '.join(missing)[:200]}")
        return list(rows)
    return list(await db.fetch("SELECT id, name, time_zone FROM locations ORDER BY id LIMIT 100000"))


# --- India site energy statement: SQL -------------------------------------------------------------
LOOKBACK, LOOKAHEAD = energy_statement.LOOKBACK, energy_statement.LOOKAHEAD
# Samples that cannot be trusted as register readings.
BAD_SAMPLE_FLAGS = (FLAG_REGISTER_DECREASED | FLAG_OUTSIDE_TRANSACTION | FLAG_FUTURE_TIMESTAMP | FLAG_ANCIENT_TIMESTAMP
                    | FLAG_IMPLAUSIBLE_UNIT | FLAG_CONNECTOR_ZERO_TOTAL | FLAG_UNPARSEABLE_VALUE)
# Sorts and hashes of a quarter's sessions fit in this; the default (4 MB) spills them to disk.
REPORT_WORK_MEM = "64MB"
Site = tuple[str, tuple[datetime, datetime]]  # IANA zone, period [start, end) in UTC


def _hours(span: timedelta) -> str:
    """An interval literal in hours: timestamptz ± hours is plain arithmetic (± days needs a time zone)."""
    return f"interval '{span // timedelta(hours=1)} hours'"


# The zones, once each: $1 IANA names, $2/$3 period start and end, $4 every zone's solar edges (from
# energy_statement.solar_edges) one after the other, $5/$6 where each zone's edges start in $4 and how many;
# then the sites: $7 location ids, $8 their zones. A moment's class is width_bucket(moment, edges): the
# number of local 09:00 and 16:00 edges at or before it, odd = solar. Exact timestamptz comparisons
# against instants Python's zoneinfo computed, so SQL and split() agree to the microsecond, DST included.
# A span [t0, t1) lies in one class when t0 and the last instant before t1 have the same number (so the
# night from 16:00 to 09:00 is one class).
_SITES = """
zones AS MATERIALIZED (
    SELECT zone, q0, q1, ($4::timestamptz[])[first + 1 : first + n] AS edges
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $5::int[], $6::int[]) AS z(zone, q0, q1, first, n)
), sites AS MATERIALIZED (
    SELECT s.loc, z.* FROM unnest($7::text[], $8::text[]) AS s(loc, zone) JOIN zones z USING (zone)
)"""

# Step 1, transactions only, every site in one pass; $9/$10 the earliest period start − LOOKBACK and the
# latest period end, $11 the earliest start. Only these constants filter rows (the index on started_at, and
# row estimates the planner can trust); whether a session belongs to its own site's period is in_scope.
# A session wholly inside its period and in one class needs no samples: meterStop − meterStart is summed
# per location. The other sessions in scope come back per location as arrays, for step 2.
SESSIONS_ENERGY_SQL = f"""
WITH {_SITES}
SELECT loc,
       COALESCE(sum(wh) FILTER (WHERE whole AND k0 % 2 = 1), 0)::float8 AS solar_wh,
       COALESCE(sum(wh) FILTER (WHERE whole AND k0 % 2 = 0), 0)::float8 AS other_wh,
       count(*) FILTER (WHERE in_scope AND start_all >= q0) AS started,
       count(*) FILTER (WHERE in_scope AND start_all < q0) AS carried_in,
       array_agg(cp) FILTER (WHERE other) AS cp, array_agg(uid) FILTER (WHERE other) AS uid,
       array_agg(start_all) FILTER (WHERE other) AS started_at, array_agg(stop_all) FILTER (WHERE other) AS stop_at,
       array_agg(w0) FILTER (WHERE other) AS w0, array_agg(w1) FILTER (WHERE other) AS w1
FROM (SELECT *, in_scope AND NOT whole AS other
      FROM (SELECT *, in_scope AND w0 IS NOT NULL AND w1 IS NOT NULL AND start_all >= q0 AND stop_all <= q1
                      AND k0 = k1 AS whole, GREATEST(w1 - w0, 0) AS wh
            FROM (SELECT p.loc, p.q0, t.charge_point_id AS cp, t.transaction_uid AS uid, t.started_at AS start_all,
                         -- NULL while open (GREATEST would skip the NULL); a stop before the start (a
                         -- charger's clock) makes an instantaneous session
                         CASE WHEN t.stopped_at IS NOT NULL THEN GREATEST(t.started_at, t.stopped_at) END AS stop_all,
                         p.q1, t.meter_start_wh AS w0, t.meter_stop_wh AS w1,  -- numeric: summed exactly
                         t.started_at >= p.q0 - {_hours(LOOKBACK)} AND t.started_at < p.q1
                         AND (t.started_at >= p.q0 OR t.stopped_at IS NULL OR t.stopped_at > p.q0) AS in_scope,
                         width_bucket(t.started_at, p.edges) AS k0,
                         width_bucket(GREATEST(t.started_at, t.stopped_at - interval '1 microsecond'), p.edges) AS k1
                  FROM sites p JOIN charge_points c ON c.location_id = p.loc
                  JOIN transactions t ON t.charge_point_id = c.id
                  WHERE t.started_at >= $9 AND t.started_at < $10
                    AND (t.started_at >= $11 OR t.stopped_at IS NULL OR t.stopped_at > $11)
                  OFFSET 0) AS a) AS b
      OFFSET 0) AS c
GROUP BY loc
"""

# Step 2, the other sessions' register steps; $9/$10 the time range of all their samples (constants:
# chunks outside it are never read), $11–$16 the sessions as arrays, $17 BAD_SAMPLE_FLAGS. Points:
# meterStart at the start, the trusted outlet register samples, meterStop at the stop; a reading below an
# earlier one is held at the earlier value (running max), so steps are never negative. Steps in one class
# inside the period are summed per location; the others come back as arrays for split().
STEPS_ENERGY_SQL = f"""
WITH {_SITES}, tx AS (
    SELECT p.loc, p.q1, t.cp, t.uid, t.started_at, t.stop_at, t.w0::float8 AS w0, t.w1::float8 AS w1
    FROM unnest($11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[], $15::numeric[], $16::numeric[])
         AS t(cp, uid, started_at, stop_at, w0, w1)
    JOIN charge_points c ON c.id = t.cp JOIN sites p ON p.loc = c.location_id
), pts AS (
    SELECT loc, cp, uid, started_at AS time, w0 AS raw FROM tx WHERE w0 IS NOT NULL
    UNION ALL
    SELECT k.loc, k.cp, k.uid, m.time, m.value
    FROM meter_samples m JOIN (
        -- One row per key (charge point ids never contain ':'): grouped by a single column, the key is
        -- known to be unique, so PostgreSQL hashes these sessions and streams the samples past them,
        -- instead of hashing every sample of the period.
        SELECT cp || ':' || uid AS key, min(loc) AS loc, min(q1) AS q1, min(cp) AS cp, min(uid) AS uid,
               min(started_at) AS started_at, max(stop_at) AS stop_at, min(w0) AS w0, max(w1) AS w1
        FROM tx GROUP BY 1) AS k ON m.charge_point_id || ':' || m.transaction_uid = k.key
    WHERE m.time >= $9 AND m.time <= $10
      AND m.measurand = 'Energy.Active.Import.Register' AND m.phase = '' AND m.location IN ('Outlet', '')
      AND m.quality_flags & $17 = 0 AND m.value <> 'NaN'::float8
      AND m.time >= k.started_at AND m.time <= COALESCE(k.stop_at, k.q1 + {_hours(LOOKAHEAD)})
      AND (k.w0 IS NULL OR m.value >= k.w0) AND (k.w1 IS NULL OR m.value <= k.w1)
    UNION ALL
    SELECT loc, cp, uid, stop_at, w1 FROM tx WHERE w1 IS NOT NULL AND stop_at IS NOT NULL
), steps AS (
    SELECT loc, time AS t0, lead(time) OVER w AS t1, lead(wh) OVER w - wh AS step_wh
    FROM (SELECT *, max(raw) OVER (PARTITION BY cp, uid ORDER BY time, raw ROWS UNBOUNDED PRECEDING) AS wh
          FROM pts) AS mono
    WINDOW w AS (PARTITION BY cp, uid ORDER BY time, raw)
)
SELECT loc,
       COALESCE(sum(step_wh) FILTER (WHERE inside AND k0 % 2 = 1), 0) AS solar_wh,
       COALESCE(sum(step_wh) FILTER (WHERE inside AND k0 % 2 = 0), 0) AS other_wh,
       array_agg(t0) FILTER (WHERE NOT inside) AS t0, array_agg(t1) FILTER (WHERE NOT inside) AS t1,
       array_agg(step_wh) FILTER (WHERE NOT inside) AS step_wh
FROM (SELECT *, t0 >= q0 AND t1 <= q1 AND k0 = k1 AS inside
      FROM (SELECT s.loc, p.q0, p.q1, s.t0, s.t1, s.step_wh, width_bucket(s.t0, p.edges) AS k0,
                   width_bucket(GREATEST(s.t0, s.t1 - interval '1 microsecond'), p.edges) AS k1
            FROM steps s JOIN sites p ON p.loc = s.loc
            WHERE s.t1 IS NOT NULL AND s.step_wh > 0 AND s.t0 < p.q1 AND (s.t1 > p.q0 OR (s.t1 = s.t0 AND s.t0 >= p.q0))
            OFFSET 0) AS s
      OFFSET 0) AS c
GROUP BY loc
"""


async def site_energy(db: asyncpg.Pool,
                      sites: dict[str, Site]) -> dict[str, tuple[energy_statement.Split, int, int]]:
    """Per location: (solar/other Wh in its period, sessions started in it, sessions carried in)."""
    periods = dict(sites.values())  # zone → period: the same for every site of a zone
    zones = {name: ZoneInfo(name) for name in periods}
    edges = {name: energy_statement.solar_edges(zones[name], period[0] - LOOKBACK, period[1] + LOOKAHEAD)
             for name, period in periods.items()}
    firsts = list(itertools.accumulate((len(e) for e in edges.values()), initial=0))[:-1]
    site_args = (list(periods), [p[0] for p in periods.values()], [p[1] for p in periods.values()],
                 [e for zone_edges in edges.values() for e in zone_edges], firsts, [len(e) for e in edges.values()],
                 list(sites), [zone for zone, _ in sites.values()])
    figures: dict[str, list[float]] = {}  # location → [solar Wh, other Wh, sessions started, carried in]
    others: dict[str, list[Any]] = {k: [] for k in ("cp", "uid", "started_at", "stop_at", "w0", "w1")}

    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")
        first = min(p[0] for p in periods.values())
        for r in await conn.fetch(SESSIONS_ENERGY_SQL, *site_args, first - LOOKBACK,
                                  max(p[1] for p in periods.values()), first):
            figures[r["loc"]] = [r["solar_wh"], r["other_wh"], r["started"], r["carried_in"]]
            for k, values in others.items():
                values.extend(r[k] or ())
        if others["cp"]:
            # the last sample any of them needs: its stop, or for one still open the end of the periods + LOOKAHEAD
            ends = [stop for stop in others["stop_at"] if stop is not None]
            if len(ends) < len(others["stop_at"]):
                ends.append(max(p[1] for p in periods.values()) + LOOKAHEAD)
            steps = await conn.fetch(STEPS_ENERGY_SQL, *site_args, min(others["started_at"]), max(ends),
                                     *others.values(), BAD_SAMPLE_FLAGS)
            for r in steps:
                f = figures[r["loc"]]
                f[0] += r["solar_wh"]
                f[1] += r["other_wh"]
                zone_name, period = sites[r["loc"]]
                for t0, t1, wh in zip(r["t0"] or (), r["t1"] or (), r["step_wh"] or (), strict=True):
                    part = energy_statement.split(t0, t1, wh, zone=zones[zone_name], period=period)
                    f[0] += part.solar_wh
                    f[1] += part.other_wh
    return {loc: (energy_statement.Split(f[0], f[1]), int(f[2]), int(f[3])) for loc, f in figures.items()}


# --- Sessions CSV ---------------------------------------------------------------------------------------
# Our stable column list. Times ISO-8601 UTC (seconds); duration_s = stopped_at − started_at, rounded;
# energy_kwh = (meterStop − meterStart) / 1000; peak_kw = highest phase-less Power.Active.Import sample in
# the session (as EV-ChART module 2); id_token_type is the registry's type of the token, never the token.
GENERIC_COLUMNS = ("session_id", "charge_point_id", "evse_uid", "evse_id", "connector_id", "location_id",
                   "id_token_type", "payment_method", "started_at", "stopped_at", "duration_s", "energy_kwh",
                   "meter_start_wh", "meter_stop_wh", "peak_kw", "stop_reason", "ocpp_version")
# EV Charging Use Specification v1.0, core specification Table 4 "Session Reporting" (Atlas Public Policy,
# AtlasPublicPolicy/charging-use-spec), in its order (plug_end_datetime, listed twice there, once).
# Always empty, no data: charge_start_datetime, charging_duration, charge_end_datetime (per-session charging
# time is not derived yet), total_fee_charged, energy_fee, session_fee, time_fee (no tariffs are stored),
# user_id (needs a keyed anonymisation we do not have). plug_start/plug_end are the transaction's start and
# stop (OCPP), not the cable events.
EVCU_COLUMNS = ("session_id", "station_id", "port_number", "plug_start_datetime", "plug_end_datetime",
                "charge_start_datetime", "session_duration", "charging_duration", "energy_kwh", "peak_kw",
                "total_fee_charged", "charge_end_datetime", "energy_fee", "session_fee", "time_fee",
                "session_initiator", "user_id", "successful_completion", "ended_by", "start_soc", "end_soc")
MAX_SESSION_ROWS = 50_000_000  # far beyond 400 days of any fleet we serve; bounds the streaming loop

# Times and decimals are formatted by PostgreSQL ($4: the to_char pattern of the schema), which is much
# cheaper than datetime.strftime per row on a quarter's half a million sessions.
SESSIONS_SQL = """
SELECT t.transaction_uid, t.charge_point_id, e.uid AS evse_uid, t.evse_id, t.connector_id, c.location_id,
       tok.token_type, t.started_at, t.stopped_at, t.stop_reason,
       to_char(t.started_at AT TIME ZONE 'UTC', $4) AS start_text,
       to_char(t.stopped_at AT TIME ZONE 'UTC', $4) AS stop_text,
       round(extract(epoch FROM t.stopped_at - t.started_at))::bigint AS seconds,
       t.meter_start_wh::text AS w0, t.meter_stop_wh::text AS w1,
       CASE WHEN t.stopped_at IS NOT NULL THEN round(t.energy_wh / 1000, 3)::text END AS energy_kwh,
       CASE WHEN t.ocpp16_transaction_id IS NOT NULL THEN '1.6'
            ELSE COALESCE(NULLIF(c.ocpp_version, '1.6'), '') END AS ocpp_version
FROM transactions t JOIN charge_points c ON c.id = t.charge_point_id
LEFT JOIN evses e ON e.charge_point_id = t.charge_point_id AND e.evse_id = t.evse_id
LEFT JOIN id_tokens tok ON tok.id_token = t.id_token
WHERE t.started_at >= $1 AND t.started_at < $2 AND ($3::text[] IS NULL OR c.location_id = ANY($3::text[]))
ORDER BY t.started_at, t.charge_point_id, t.transaction_uid
"""
ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
EVCU_UTC = 'YYYYMMDD HH24:MI:SS "[+00:00]"'  # the specification's "YYYYMMDD hh:mm:ss [+hh:mm]", in UTC

# Peak power and first/last SoC of the sessions that started in [$1, $2] (a batch of the cursor, and
# perhaps a few more that share its last start time); $3 the batch's last stop. Constant time bounds, so
# only the chunks of the batch's hours are read, and the sessions come back from the table, not as arrays.
EXTRAS_SQL = """
SELECT t.charge_point_id AS cp, t.transaction_uid AS uid,
       max(m.value) FILTER (WHERE m.measurand = 'Power.Active.Import') / 1000 AS peak_kw,
       (array_agg(m.value ORDER BY m.time) FILTER (WHERE m.measurand = 'SoC' AND m.quality_flags & $4 = 0))[1]
           AS start_soc,
       (array_agg(m.value ORDER BY m.time DESC) FILTER (WHERE m.measurand = 'SoC' AND m.quality_flags & $4 = 0))[1]
           AS end_soc
FROM transactions t
JOIN meter_samples m ON m.charge_point_id = t.charge_point_id AND m.transaction_uid = t.transaction_uid
                    AND m.time >= t.started_at AND m.time <= t.stopped_at
WHERE t.started_at >= $1 AND t.started_at <= $2 AND m.time >= $1 AND m.time <= $3
  AND m.measurand IN ('Power.Active.Import', 'SoC') AND m.phase = ''
GROUP BY t.charge_point_id, t.transaction_uid
"""


def _fixed(value: float | None, places: int) -> str:
    return "" if value is None else f"{value:.{places}f}"


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _session_row(schema: str, r: asyncpg.Record, extra: asyncpg.Record | None) -> tuple[object, ...]:
    peak = extra["peak_kw"] if extra is not None else None
    payment = evchart.PAYMENT_METHODS.get(r["token_type"], "other") if r["token_type"] else ""
    if schema == "generic":
        return (r["transaction_uid"], r["charge_point_id"], r["evse_uid"], r["evse_id"], r["connector_id"],
                r["location_id"], r["token_type"], payment, r["start_text"], r["stop_text"], r["seconds"],
                r["energy_kwh"], r["w0"], r["w1"], _fixed(peak, 3), r["stop_reason"], r["ocpp_version"])
    seconds, energy = r["seconds"], r["energy_kwh"]
    soc = [None if extra is None or extra[k] is None else extra[k] / 100 for k in ("start_soc", "end_soc")]
    success = "" if r["stopped_at"] is None else (
        "TRUE" if evchart.session_error(r["stop_reason"], None if energy is None else float(energy)) == ""
        else "FALSE")
    return (r["transaction_uid"], r["charge_point_id"], r["evse_id"], r["start_text"], r["stop_text"],
            "", "" if seconds is None or seconds < 0 else _hms(seconds), "",
            "" if energy is None or energy.startswith("-") else energy, _fixed(peak, 3), "", "", "", "", "",
            payment, "", success, r["stop_reason"], _fixed(soc[0], 3), _fixed(soc[1], 3))


def _csv_chunk(rows: list[tuple[object, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue().encode("utf-8")


async def _extras(conn: asyncpg.Connection | PoolConnectionProxy,
                  batch: list[asyncpg.Record]) -> dict[tuple[str, str], asyncpg.Record]:
    stops = [r["stopped_at"] for r in batch if r["stopped_at"] is not None]
    if not stops:
        return {}
    rows = await conn.fetch(EXTRAS_SQL, batch[0]["started_at"], batch[-1]["started_at"], max(stops),
                            BAD_SAMPLE_FLAGS)
    return {(r["cp"], r["uid"]): r for r in rows}


async def stream_sessions(db: asyncpg.Pool, window: tuple[datetime, datetime], ids: list[str] | None,
                          schema: str, *, batch_rows: int) -> AsyncIterator[bytes]:
    """The CSV, UTF-8 with a BOM, one batch of sessions at a time from a server-side cursor."""
    yield b"\xef\xbb\xbf" + _csv_chunk([GENERIC_COLUMNS if schema == "generic" else EVCU_COLUMNS])
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL cursor_tuple_fraction = 1")  # every row is read: plan for all, not the first
        cursor = await conn.cursor(SESSIONS_SQL, window[0], window[1], ids,
                                   ISO_UTC if schema == "generic" else EVCU_UTC)
        for _ in range(MAX_SESSION_ROWS // batch_rows + 1):
            batch = await cursor.fetch(batch_rows)
            if not batch:
                return
            extras = await _extras(conn, batch)
            yield _csv_chunk([_session_row(schema, r, extras.get((r["charge_point_id"], r["transaction_uid"])))
                              for r in batch])
        raise RuntimeError(f"more than {MAX_SESSION_ROWS} sessions in one export")


# --- India site energy statement: the answer --------------------------------------------------------


def _check_statement(year: int, quarter: int, rate: float, convention: energy_statement.QuarterConvention,
                     now: datetime) -> None:
    if not EARLIEST_YEAR <= year <= LATEST_YEAR:
        raise _bad(f"year must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
    if not 1 <= quarter <= 4:
        raise _bad("quarter must be 1, 2, 3 or 4")
    if not math.isfinite(rate) or not 0 <= rate <= MAX_RATE_PER_KWH:
        raise _bad(f"land_share_rate_per_kwh must be a number from 0 to {MAX_RATE_PER_KWH:g} (INR per kWh)")
    # The quarter begins first at UTC+14 (Etc/GMT-14 in POSIX sign): before then it has begun nowhere.
    if energy_statement.quarter_bounds(year, quarter, ZoneInfo("Etc/GMT-14"), convention)[0] > now:
        raise _bad(f"{energy_statement.period_label(year, quarter, convention)} has not begun")


async def _statement_sites(db: asyncpg.Pool, locations: list[asyncpg.Record], year: int, quarter: int,
                           convention: energy_statement.QuarterConvention, rate: Decimal,
                           now: datetime) -> list[SiteEnergy]:
    zones = {r["id"]: ZoneInfo(r["time_zone"]) for r in locations}
    bounds = {r["id"]: energy_statement.quarter_bounds(year, quarter, zones[r["id"]], convention) for r in locations}
    figures = (await site_energy(db, {r["id"]: (r["time_zone"], bounds[r["id"]]) for r in locations})
               if locations else {})
    sites = []
    for r in locations:
        split, started, carried = figures.get(r["id"], (energy_statement.Split(), 0, 0))
        solar, other = energy_statement.kwh(split.solar_wh), energy_statement.kwh(split.other_wh)
        start, end = bounds[r["id"]]
        sites.append(SiteEnergy(
            location_id=r["id"], name=r["name"], time_zone=r["time_zone"], period_start_utc=_utc(start),
            period_end_utc=_utc(end), period_start_local=start.astimezone(zones[r["id"]]).isoformat(),
            period_end_local=end.astimezone(zones[r["id"]]).isoformat(), period_complete=end <= now,
            energy_kwh=float(solar + other), solar_kwh=float(solar), non_solar_kwh=float(other),
            sessions=started, sessions_carried_in=carried,
            land_share_amount=float(energy_statement.land_share(solar + other, rate))))
    return sites


def _totals(sites: list[SiteEnergy]) -> Totals:
    """Sums of the figures shown per site (in decimal, so that 0.1 + 0.2 is 0.3)."""
    def total(name: str) -> float:
        return float(sum((Decimal(repr(getattr(s, name))) for s in sites), Decimal(0)))

    return Totals(energy_kwh=total("energy_kwh"), solar_kwh=total("solar_kwh"), non_solar_kwh=total("non_solar_kwh"),
                  sessions=sum(s.sessions for s in sites),
                  sessions_carried_in=sum(s.sessions_carried_in for s in sites),
                  land_share_amount=total("land_share_amount"))


def build_exports_router(*, pool: asyncpg.Pool | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/reporting/exports", tags=["reporting"])

    def db() -> asyncpg.Pool:
        if pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no database on this role")
        return pool

    @router.get("/india/site-energy-statement", response_model=SiteEnergyStatement,
                responses={200: {"content": _CSV}, **_ERRORS,
                           409: {"description": "A location's time zone is not a known IANA name"}})
    async def india_site_energy_statement(
        year: Annotated[int, Query(json_schema_extra={"minimum": EARLIEST_YEAR, "maximum": LATEST_YEAR})],
        quarter: Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": 4})],
        location_id: LocationIds = None,
        land_share_rate_per_kwh: Annotated[float, Query(json_schema_extra={"minimum": 0,
                                                                          "maximum": MAX_RATE_PER_KWH})] = 1.0,
        quarter_convention: Literal["calendar", "fiscal_in"] = "calendar",
        output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    ) -> Any:
        """India's quarterly site energy statement (MoP EV charging guidelines 2024, reporting.md §4.1).

        Per location: kWh delivered in the quarter, split into solar hours 09:00–16:00 station-local
        time and the rest; sessions started in the quarter; and the land-owner revenue share at
        ``land_share_rate_per_kwh`` INR per kWh (₹1/kWh by default). ``quarter_convention=calendar``
        (default): Q1 = January–March of ``year``; ``fiscal_in``: India's financial year starting
        1 April of ``year`` (FY 2026-27 is year=2026, Q1 = April–June). Quarters begin and end at
        station-local midnight. ``year`` 2010–2100, ``quarter`` 1–4, rate 0–1000; a quarter that
        has not begun is refused. See ``energy_attribution`` in the answer for how energy is
        attributed to time.
        """
        now = datetime.now(UTC)
        _check_statement(year, quarter, land_share_rate_per_kwh, quarter_convention, now)
        locations = await _locations(db(), location_id)
        broken = [r["id"] for r in locations if _zone(r["time_zone"]) is None]
        if broken:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"unknown IANA time zone at location {', '.join(broken)[:200]}: fix the registry")
        rate = Decimal(repr(land_share_rate_per_kwh))
        sites = await _statement_sites(db(), locations, year, quarter, quarter_convention, rate, now)
        generated = _utc(now)
        label = energy_statement.period_label(year, quarter, quarter_convention)
        if output == "csv":
            body = evchart.to_csv(STATEMENT_COLUMNS, (
                (s.location_id, s.name, s.time_zone, label, s.period_start_utc, s.period_end_utc, s.period_start_local,
                 s.period_end_local, "true" if s.period_complete else "false", f"{s.energy_kwh:.3f}",
                 f"{s.solar_kwh:.3f}", f"{s.non_solar_kwh:.3f}", s.sessions, s.sessions_carried_in, str(rate),
                 f"{s.land_share_amount:.2f}", "INR", FORMULA_VERSION, generated) for s in sites))
            return _csv_response(body, f"india_site_energy_{label.replace(' ', '_')}.csv")
        return SiteEnergyStatement(
            report="india_site_energy_statement", formula_version=FORMULA_VERSION, generated_at=generated,
            year=year, quarter=quarter, quarter_convention=quarter_convention, period=label,
            solar_window_local=SolarWindow(start=energy_statement.SOLAR_START.strftime("%H:%M"),
                                           end=energy_statement.SOLAR_END.strftime("%H:%M")),
            currency="INR", land_share_rate_per_kwh=float(rate), land_share_basis=LAND_SHARE_BASIS,
            energy_attribution=energy_statement.ATTRIBUTION, sites=sites, totals=_totals(sites))

    @router.get("/sessions.csv", response_class=Response, responses={200: {"content": _CSV}, **_ERRORS})
    async def sessions_csv(
        start: Annotated[datetime, Query(alias="from")],
        end: Annotated[datetime, Query(alias="to")],
        location_id: LocationIds = None,
        schema: Literal["generic", "evcu_session"] = "generic",
    ) -> Response:
        """One row per session that started in [from, to) (at most 400 days), UTF-8 with a BOM, streamed.

        ``generic``: our documented columns (times ISO-8601 UTC ``…Z``; the id token's *type*, never
        the token). ``evcu_session``: the EV Charging Use Specification v1.0 session table (Atlas
        Public Policy), in its own notations; columns we have no data for are left empty.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise _bad("from and to need a UTC offset")
        try:
            window = (start.astimezone(UTC), end.astimezone(UTC))
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise _bad("from and to must be between the years 1 and 9999 in UTC") from None
        if not timedelta(0) < window[1] - window[0] <= MAX_WINDOW:
            raise _bad("the window must be positive and at most 400 days")
        ids = [r["id"] for r in await _locations(db(), location_id)] if location_id else None

        body = stream_sessions(db(), window, ids, schema, batch_rows=SESSION_BATCH_ROWS)
        filename = f"sessions_{schema}_{window[0]:%Y%m%d}_{window[1]:%Y%m%d}.csv"
        return StreamingResponse(body, media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return router
