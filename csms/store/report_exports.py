"""Reads for the regulatory exports (``csms.api.exports``): the locations asked for, India's site
energy per location (the utilization reports' energy, ``csms.store.report_usage.period_energy``),
and the sessions CSV (generic, or the EV Charging Use Spec session table) as SQL that formats every
value, streamed from COPY a slice of the window at a time (``csms.store.csv_stream``); each session's
peak power and SoC come from the roll-up's per-session summary where it is settled
(``csms.store.session_rows``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from csms.reporting import energy_statement
from csms.reporting.usage import PortRef
from csms.store import csv_stream, evchart_sessions, session_rows
from csms.store.report_usage import period_energy
from schemas.port_state import MIN_SUCCESS_WH


async def locations(db: asyncpg.Pool, ids: list[str] | None) -> list[asyncpg.Record]:
    """The locations with these ids (id, name, time_zone; unknown ids are left out), all when
    ``ids`` is empty."""
    if ids:
        return list(await db.fetch("SELECT id, name, time_zone FROM locations WHERE id = ANY($1::text[]) "
                                   "ORDER BY id", list(dict.fromkeys(ids))))
    return list(await db.fetch("SELECT id, name, time_zone FROM locations ORDER BY id LIMIT 100000"))


# --- India site energy statement: energy per port ------------------------------------------------
Site = tuple[str, tuple[datetime, datetime]]  # IANA zone, period [start, end) in UTC

_SITE_PORTS_SQL = """
SELECT c.location_id, e.charge_point_id, e.evse_id FROM evses e JOIN charge_points c ON c.id = e.charge_point_id
WHERE c.location_id = ANY($1::text[]) ORDER BY 1, 2, 3
"""


async def site_energy(db: asyncpg.Pool,
                      sites: dict[str, Site]) -> dict[str, tuple[energy_statement.Split, int, int]]:
    """Per location: (solar/other Wh in its period, sessions started in it, sessions carried in), the
    sums over its ports (EVSEs) of :func:`csms.store.report_usage.period_energy`: the same energy, by the
    same rule and from the same roll-up, as the utilization reports."""
    groups: dict[Site, list[tuple[str, PortRef]]] = {}
    for r in await db.fetch(_SITE_PORTS_SQL, list(sites)):
        site = sites[r["location_id"]]
        groups.setdefault(site, []).append((r["location_id"], PortRef(r["charge_point_id"], r["evse_id"], 0.0)))
    figures: dict[str, list[float]] = {loc: [0.0, 0.0, 0, 0] for loc in sites}
    # The zones' periods are independent: computed at once, on connections of their own.
    results = await asyncio.gather(*(period_energy(db, [ref for _, ref in members], period, ZoneInfo(zone_name))
                                     for (zone_name, period), members in groups.items()))
    for members, per_port in zip(groups.values(), results, strict=True):
        for loc, ref in members:
            port = per_port[(ref.charge_point_id, ref.evse_id)]
            f = figures[loc]
            f[0] += port.solar_wh
            f[1] += port.other_wh
            f[2] += port.sessions
            f[3] += port.carried_in
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
ISO_UTC = evchart_sessions.ISO_UTC   # the API's one time format (csms.api.common.utc_text), in SQL
EVCU_UTC = 'YYYYMMDD HH24:MI:SS "[+00:00]"'  # the specification's "YYYYMMDD hh:mm:ss [+hh:mm]", in UTC
_T = csv_stream.text

# A slice of sessions ($1/$2 started_at, $3 location ids or NULL), with the peak power and first/last SoC
# of each finished session (``csms.reporting.session_rows``: the roll-up's summary, or its samples inside
# [start, stop]); every column formatted by PostgreSQL.
_LOCATIONS = "AND ($3::text[] IS NULL OR c.location_id = ANY($3::text[]))"
SESSION_BOUNDS_SQL = session_rows.bounds_sql(where=_LOCATIONS)
_FIELDS = ("t.evse_id, t.connector_id, t.stop_reason, t.energy_wh, t.meter_start_wh, t.meter_stop_wh, "
           "t.ocpp16_transaction_id, t.id_token, c.location_id, c.ocpp_version AS cp_version, "
           "round(extract(epoch FROM t.stopped_at - t.started_at))::bigint AS seconds, "
           "CASE WHEN t.stopped_at IS NOT NULL THEN round(t.energy_wh / 1000, 3) END AS kwh")
_OUTER = """LEFT JOIN evses e ON e.charge_point_id = f.charge_point_id AND e.evse_id = f.evse_id
LEFT JOIN id_tokens tok ON tok.id_token = f.id_token"""


def _session_rows(columns: tuple[str, ...]) -> tuple[str, str]:
    return session_rows.rows_sql(fields=_FIELDS, columns=", ".join(columns), n_args=1, where=_LOCATIONS,
                                 outer_joins=_OUTER)


def _finished(sql: str) -> str:
    """A figure of a finished session (an open one has none yet)."""
    return f"CASE WHEN f.stopped_at IS NOT NULL THEN {sql} END"


_OTHER = "'other'"
_PAYMENT = f"CASE WHEN tok.token_type <> '' THEN {evchart_sessions.payment_sql('tok.token_type', _OTHER)} END"
_PEAK = _finished("round((f.peak_power_w / 1000)::numeric, 3)")
GENERIC_ROWS_SQL = _session_rows((
    # a charge point id is printable and never empty (csms.ocpp.identity): no line-break check
    _T("f.transaction_uid"), "f.charge_point_id", _T("e.uid"), "f.evse_id", "f.connector_id",
    _T("f.location_id"), _T("tok.token_type"), _PAYMENT, f"to_char(f.started_at AT TIME ZONE 'UTC', '{ISO_UTC}')",
    f"to_char(f.stopped_at AT TIME ZONE 'UTC', '{ISO_UTC}')", "f.seconds", "f.kwh", "f.meter_start_wh",
    "f.meter_stop_wh", _PEAK, _T("f.stop_reason"),
    _T("CASE WHEN f.ocpp16_transaction_id IS NOT NULL THEN '1.6' ELSE COALESCE(NULLIF(f.cp_version, '1.6'), '') END")))


def _two(sql: str) -> str:
    return f"CASE WHEN {sql} < 10 THEN '0' ELSE '' END || ({sql})::text"


_HMS = (f"CASE WHEN f.seconds >= 0 THEN {_two('f.seconds / 3600')} || ':' || {_two('f.seconds % 3600 / 60')} || ':' "
        f"|| {_two('f.seconds % 60')} END")
_SUCCESS = (f"CASE WHEN f.stopped_at IS NULL THEN NULL WHEN f.stop_reason = ANY({evchart_sessions.failed_sql()}) "
            f"OR f.kwh * 1000 < {MIN_SUCCESS_WH} THEN 'FALSE' ELSE 'TRUE' END")
EVCU_ROWS_SQL = _session_rows((
    _T("f.transaction_uid"), "f.charge_point_id", "f.evse_id",
    f"to_char(f.started_at AT TIME ZONE 'UTC', '{EVCU_UTC}')",
    f"to_char(f.stopped_at AT TIME ZONE 'UTC', '{EVCU_UTC}')",
    "NULL", _HMS, "NULL", "CASE WHEN f.kwh >= 0 THEN f.kwh END", _PEAK, "NULL", "NULL", "NULL", "NULL", "NULL",
    _PAYMENT, "NULL", _SUCCESS, _T("f.stop_reason"), _finished("round((f.start_soc / 100)::numeric, 3)"),
    _finished("round((f.end_soc / 100)::numeric, 3)")))


def stream_sessions(db: asyncpg.Pool, window: tuple[datetime, datetime], ids: list[str] | None,
                    schema: str) -> AsyncGenerator[bytes, None]:
    """The CSV, UTF-8 with a BOM, streamed from COPY a slice of the window at a time."""
    generic = schema == "generic"
    return csv_stream.stream(db, columns=GENERIC_COLUMNS if generic else EVCU_COLUMNS, window=window,
                             bounds_sql=SESSION_BOUNDS_SQL, bounds_args=(ids,),
                             rows_sql=GENERIC_ROWS_SQL if generic else EVCU_ROWS_SQL, args=(ids,))
