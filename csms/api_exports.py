"""Regulatory exports under ``/api/v1/reporting/exports``: India's quarterly site energy
statement and the sessions CSV (generic, or the EV Charging Use Spec session table).

The statement's energy is the utilization reports' energy (one rule: register samples
interpolated linearly, ``schemas.port_state.session_energy``), read per port and station-local
day from the roll-up (``port_state_day.energy_wh``/``energy_solar_wh``), with only what the
roll-up lacks yet computed from raw rows. The sessions CSV is streamed from COPY a slice of the
window at a time (``csms.reporting.csv_stream``), so a 400-day export never sits in memory; each
session's peak power and SoC come from the roll-up's per-session summary where it is settled
(``csms.reporting.session_rows``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from csms.reporting import FORMULA_VERSION, csv_stream, energy_statement, evchart, evchart_sessions, session_rows
from csms.reporting.usage import PortRef, period_energy
from schemas.port_state import MIN_SUCCESS_WH

MAX_WINDOW = timedelta(days=400)
MAX_RATE_PER_KWH = 1000.0
EARLIEST_YEAR, LATEST_YEAR = 2010, 2100
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


# --- India site energy statement: energy per port ------------------------------------------------
Site = tuple[str, tuple[datetime, datetime]]  # IANA zone, period [start, end) in UTC

_SITE_PORTS_SQL = """
SELECT c.location_id, e.charge_point_id, e.evse_id FROM evses e JOIN charge_points c ON c.id = e.charge_point_id
WHERE c.location_id = ANY($1::text[]) ORDER BY 1, 2, 3
"""


async def site_energy(db: asyncpg.Pool,
                      sites: dict[str, Site]) -> dict[str, tuple[energy_statement.Split, int, int]]:
    """Per location: (solar/other Wh in its period, sessions started in it, sessions carried in), the
    sums over its ports (EVSEs) of :func:`csms.reporting.usage.period_energy`: the same energy, by the
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
ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
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

        body = stream_sessions(db(), window, ids, schema)
        filename = f"sessions_{schema}_{window[0]:%Y%m%d}_{window[1]:%Y%m%d}.csv"
        return StreamingResponse(body, media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return router
