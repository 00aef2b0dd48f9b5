"""Regulatory exports under ``/api/v1/reporting/exports``: India's quarterly site energy
statement and the sessions CSV (generic, or the EV Charging Use Spec session table).

The statement's energy is the utilization reports' energy (one rule: register samples
interpolated linearly, ``schemas.port_state.session_energy``), read per port and station-local
day from the roll-up (``port_state_day.energy_wh``/``energy_solar_wh``), with only what the
roll-up lacks yet computed from raw rows (``csms.store.report_exports.site_energy``). The sessions
CSV is streamed from COPY a slice of the window at a time (``csms.store.csv_stream``), so a
400-day export never sits in memory; each session's peak power and SoC come from the roll-up's
per-session summary once it is settled (``csms.store.session_rows``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from csms.api.common import bad_request, csv_response, database, utc_text
from csms.reporting import FORMULA_VERSION, energy_statement, evchart
from csms.store import report_exports
from csms.store.report_exports import site_energy, stream_sessions

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



def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def streamed_csv(body: AsyncIterator[bytes], filename: str) -> StreamingResponse:
    """A CSV download sent as it is produced (the streamed form of ``csms.api.common.csv_response``)."""
    return StreamingResponse(body, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def _locations(db: asyncpg.Pool, ids: list[str] | None) -> list[asyncpg.Record]:
    """The requested locations (all when ``ids`` is empty), or 404 naming the unknown ones."""
    rows = await report_exports.locations(db, ids)
    if ids:
        missing = sorted(set(ids) - {r["id"] for r in rows})
        if missing:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no location {', '.join(missing)[:200]}")
    return rows


# --- India site energy statement: the answer --------------------------------------------------------


def _check_statement(year: int, quarter: int, rate: float, convention: energy_statement.QuarterConvention,
                     now: datetime) -> None:
    if not EARLIEST_YEAR <= year <= LATEST_YEAR:
        raise bad_request(f"year must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
    if not 1 <= quarter <= 4:
        raise bad_request("quarter must be 1, 2, 3 or 4")
    if not math.isfinite(rate) or not 0 <= rate <= MAX_RATE_PER_KWH:
        raise bad_request(f"land_share_rate_per_kwh must be a number from 0 to {MAX_RATE_PER_KWH:g} (INR per kWh)")
    # The quarter begins first at UTC+14 (Etc/GMT-14 in POSIX sign): before then it has begun nowhere.
    if energy_statement.quarter_bounds(year, quarter, ZoneInfo("Etc/GMT-14"), convention)[0] > now:
        raise bad_request(f"{energy_statement.period_label(year, quarter, convention)} has not begun")


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
            location_id=r["id"], name=r["name"], time_zone=r["time_zone"], period_start_utc=utc_text(start),
            period_end_utc=utc_text(end), period_start_local=start.astimezone(zones[r["id"]]).isoformat(),
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

    db = database(pool)

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
        generated = utc_text(now)
        label = energy_statement.period_label(year, quarter, quarter_convention)
        if output == "csv":
            body = evchart.to_csv(STATEMENT_COLUMNS, (
                (s.location_id, s.name, s.time_zone, label, s.period_start_utc, s.period_end_utc, s.period_start_local,
                 s.period_end_local, "true" if s.period_complete else "false", f"{s.energy_kwh:.3f}",
                 f"{s.solar_kwh:.3f}", f"{s.non_solar_kwh:.3f}", s.sessions, s.sessions_carried_in, str(rate),
                 f"{s.land_share_amount:.2f}", "INR", FORMULA_VERSION, generated) for s in sites))
            return csv_response(body, f"india_site_energy_{label.replace(' ', '_')}.csv")
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
            raise bad_request("from and to need a UTC offset")
        try:
            window = (start.astimezone(UTC), end.astimezone(UTC))
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise bad_request("from and to must be between the years 1 and 9999 in UTC") from None
        if not timedelta(0) < window[1] - window[0] <= MAX_WINDOW:
            raise bad_request("the window must be positive and at most 400 days")
        ids = [r["id"] for r in await _locations(db(), location_id)] if location_id else None

        body = stream_sessions(db(), window, ids, schema)
        filename = f"sessions_{schema}_{window[0]:%Y%m%d}_{window[1]:%Y%m%d}.csv"
        return streamed_csv(body, filename)

    return router
