"""Reporting API (read-only apart from the append-only exclusion log): port uptime and outages.

Every response carries ``formula_version``, ``data_completeness`` and ``generated_at`` so a
figure can be traced to the rules that produced it (reporting.md §7). A window that reaches
past now is computed up to now and says so (``complete: false``, ``computed_until``); figures
and verdicts that need the whole period are null then, with the reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, Field, HttpUrl, model_validator

from csms.api.common import CpId, bad_request, csv_response, database, utc_text
from csms.api.exports import streamed_csv
from csms.api.utilization import Window, WindowQuery, build_utilization_router
from csms.reporting import FORMULA_VERSION, evchart
from csms.reporting.calendar import EARLIEST, LATEST, WindowError, parse_month
from csms.reporting.fleet import FleetPort, PortKey, aggregate, computed_part
from csms.reporting.hours import opening_intervals
from csms.reporting.outages import Outage
from csms.reporting.uptime import (
    EXCLUSION_REASONS,
    Exclusion,
    NullReason,
    UptimeResult,
    nevi_window,
    outage_exclusion,
)
from csms.store import evchart_sessions, report_fleet
from csms.store.report_fleet import (
    READ_CONCURRENCY,
    exclusion_log,
    fleet_port,
    fleet_ports,
    fleet_uptime,
    fleet_uptime_windows,
)

Year = Annotated[int, Query(ge=2020, le=2100)]
Quarter = Annotated[int, Query(ge=1, le=4)]
Provider = Annotated[str, Query(max_length=64, pattern=r"^[a-z0-9_]+$")]
Grace = Annotated[int, Query(ge=0, le=86400)]
EvseId = Annotated[int, Path(ge=1, le=64)]
ReportMonth = Annotated[str | None, Query(max_length=7, description="NEVI: YYYY-MM, the last month of the 12")]
EVCHART_NOTES_CHARS = 255   # EV-ChART module 4 excluded_outage_notes: string(255)


class ExclusionIn(BaseModel):
    starts_at: datetime
    ends_at: datetime
    reason: Literal["utility_interruption", "vehicle_fault", "scheduled_maintenance", "vandalism",
                    "natural_disaster", "outside_hours", "withdrawn"]
    notes: str = Field("", max_length=2000)
    evidence_urls: list[HttpUrl] = Field(default_factory=list, max_length=20)
    claimed_by: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> ExclusionIn:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("timestamps need a UTC offset")
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.starts_at < EARLIEST or self.ends_at > LATEST:
            raise ValueError(f"the exclusion must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
        return self


@dataclass(frozen=True, slots=True)
class UptimeWindow:
    """How the caller gave the window: NEVI's report month, or a generic/UK window."""

    report_month: str | None
    query: WindowQuery

    def check(self, method: str) -> None:
        """Refuse a bad window before any work (in UTC; each station's zone applies later)."""
        self.resolve(method, "UTC")

    def resolve(self, method: str, time_zone: str) -> tuple[tuple[datetime, datetime], str]:
        try:
            if method == "nevi":
                if self.report_month is None:
                    raise WindowError("method=nevi needs report_month=YYYY-MM")
                if self.query.given():
                    raise WindowError("method=nevi takes report_month only: the window is the 12 months ending "
                                      "with it, in the station's time zone")
                year, month = parse_month(self.report_month, "report_month")
                return nevi_window(f"{year:04d}-{month:02d}", time_zone), f"report_month={self.report_month}"
            if self.report_month is not None:
                raise WindowError(f"report_month is for method=nevi; method={method} takes from and to, or "
                                  "local_date, month or year")
            return self.query.window(ZoneInfo(time_zone))
        except WindowError as exc:
            raise bad_request(str(exc)) from exc


def _reasons(reasons: list[NullReason]) -> list[dict[str, str]]:
    return [{"code": r.code, "message": r.message} for r in reasons]


def _view(result: UptimeResult, port: FleetPort, label: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "charge_point_id": port.info.charge_point_id, "evse_id": port.info.evse_id, "method": result.method,
        "window": label, "time_zone": port.info.time_zone,
        "period_start": utc_text(result.period_start), "period_end": utc_text(result.period_end),
        "complete": result.complete,
        "computed_until": utc_text(result.computed_until or result.period_end),
        "minutes_in_period": round(result.minutes_in_period, 2), "minutes_known": round(result.minutes_known, 2),
        "denominator_minutes": result.denominator_minutes,
        "t_outage_min": result.t_outage_min, "t_excluded_min": result.t_excluded_min,
        "excluded_by_reason": result.excluded_by_reason, "uptime_pct": result.uptime_pct,
        "uptime_pct_null_reasons": _reasons(result.uptime_null_reasons),
        "meets_requirement": result.meets_requirement,
        "meets_requirement_null_reasons": _reasons(result.verdict_null_reasons),
        "eligible": result.eligible,
        "operational_since": utc_text(port.info.operational_since) if port.info.operational_since else None,
        "operational_since_source": port.info.operational_since_source,
        "pro_rata_uptime_pct": result.pro_rata_uptime_pct, "data_completeness": result.data_completeness,
        "known_since": utc_text(result.known_since) if result.known_since else None,
        "formula_version": FORMULA_VERSION, "generated_at": utc_text(datetime.now(UTC)),
    }
    if result.method == "uk":
        body["exclusions_not_applied_min"] = result.exclusions_not_applied_min
    return body


def _outage_view(outage: Outage, applied: list[Exclusion], opening: list[tuple[datetime, datetime]],
                 window: tuple[datetime, datetime]) -> dict[str, Any]:
    excluded = outage_exclusion(outage, applied, opening, window)
    return {"outage_id": outage.outage_id, "started_at": outage.outage_id, "start": utc_text(outage.start),
            "end": utc_text(outage.end), "continues": outage.continues, "duration_min": round(outage.minutes, 2),
            "detection": outage.detection, "scope": outage.scope, "cause": outage.cause,
            "excluded": excluded.reason is not None, "excluded_min": round(excluded.excluded_min, 2),
            "exclusion_reason": excluded.reason,
            "exclusion_reason_code_evchart": EXCLUSION_REASONS.get(excluded.reason or ""),
            "exclusion_notes": excluded.notes}


async def _port(db: asyncpg.Pool, cp_id: str, evse_id: int) -> FleetPort:
    port = await fleet_port(db, cp_id, evse_id)
    if port is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no port {cp_id}/{evse_id}")
    return port


def build_reporting_router(*, pool: asyncpg.Pool | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/reporting", tags=["reporting"])

    db = database(pool)

    @router.get("/ports/{cp_id}/{evse_id}/uptime")
    async def port_uptime(
        cp_id: CpId, evse_id: EvseId, window: Window,
        method: Literal["nevi", "generic", "uk"] = "nevi",
        report_month: ReportMonth = None,
        offline_grace_s: Grace = 0,
        offline_counts_as_outage: bool = True,
    ) -> dict[str, Any]:
        """Uptime of one port (EVSE): NEVI 23 CFR 680.116(b) (``report_month``), or generic / UK
        PCPR reliability over ``from``/``to`` or a station-local ``local_date``, ``month`` or ``year``."""
        spec = UptimeWindow(report_month, window)
        spec.check(method)
        port = await _port(db(), cp_id, evse_id)
        span, label = spec.resolve(method, port.info.time_zone)
        [(_, [(result, _)])] = await fleet_uptime_windows(
            db(), [port], method, [span], now=datetime.now(UTC), offline_grace_s=offline_grace_s,
            offline_counts=offline_counts_as_outage)
        return _view(result, port, label)

    @router.get("/ports/{cp_id}/{evse_id}/outages")
    async def port_outages(cp_id: CpId, evse_id: EvseId, window: Window,
                           offline_grace_s: Grace = 0) -> dict[str, Any]:
        """Every outage of the port in the window (``from``/``to``, or a station-local
        ``local_date``, ``month`` or ``year``), with its cause and the exclusion applied to it.
        ``outage_id`` is the outage's start in the data — the same in every window and in
        EV-ChART module 4; ``start``/``end``/``duration_min`` are the part inside the window."""
        spec = UptimeWindow(None, window)
        spec.check("generic")
        port = await _port(db(), cp_id, evse_id)
        span, label = spec.resolve("generic", port.info.time_zone)
        [(_, [(result, applied)])] = await fleet_uptime_windows(
            db(), [port], "generic", [span], now=datetime.now(UTC), offline_grace_s=offline_grace_s)
        computed = (span[0], result.computed_until or span[1])
        opening = opening_intervals(port.info.opening_hours, port.info.time_zone, computed)
        return {"charge_point_id": cp_id, "evse_id": evse_id, "window": label, "period_start": utc_text(span[0]),
                "period_end": utc_text(span[1]), "complete": result.complete, "computed_until": utc_text(computed[1]),
                "outages": [_outage_view(o, applied, opening, computed) for o in result.outages],
                "formula_version": FORMULA_VERSION, "data_completeness": result.data_completeness,
                "generated_at": utc_text(datetime.now(UTC))}

    @router.post("/ports/{cp_id}/{evse_id}/exclusions", status_code=status.HTTP_201_CREATED)
    async def add_exclusion(cp_id: CpId, evse_id: EvseId, body: ExclusionIn) -> dict[str, Any]:
        """Record why an outage should not count (append-only; a later entry for the same span wins)."""
        await _port(db(), cp_id, evse_id)
        row = await report_fleet.add_exclusion(db(), cp_id, evse_id, body.starts_at, body.ends_at, body.reason,
                                               body.notes, [str(u) for u in body.evidence_urls], body.claimed_by)
        return {"id": row["id"], "created_at": utc_text(row["created_at"])}

    @router.get("/ports/{cp_id}/{evse_id}/exclusions")
    async def list_exclusions(cp_id: CpId, evse_id: EvseId) -> list[dict[str, Any]]:
        """The whole audit trail of exclusions for the port, oldest first."""
        await _port(db(), cp_id, evse_id)
        rows = await exclusion_log(db(), cp_id, evse_id)
        return [{**r, "starts_at": utc_text(r["starts_at"]), "ends_at": utc_text(r["ends_at"]),
                 "created_at": utc_text(r["created_at"])} for r in rows]

    @router.get("/exports/ev-chart/module-2.csv", response_class=Response)
    async def evchart_module_2(year: Year, quarter: Quarter, network_provider: Provider = "other") -> Response:
        """EV-ChART module 2: one row per session that started in the quarter at its station
        (station-local quarter, as modules 3 and 4; times in UTC), in start order, streamed."""
        quarters = {}
        for zone in await evchart_sessions.station_zones(db()):
            try:
                quarters[zone] = evchart.quarter_bounds(year, quarter, zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise HTTPException(status.HTTP_409_CONFLICT, f"unknown IANA time zone {zone[:64]!r} at a "
                                    "location: fix the registry") from None
        body = evchart_sessions.stream_module_2(db(), quarters, network_provider)
        filename = f"module2_{year}_Q{quarter}.csv"
        return streamed_csv(body, filename)

    @router.get("/exports/ev-chart/module-3.csv", response_class=Response)
    async def evchart_module_3(year: Year, quarter: Quarter, network_provider: Provider = "other",
                               offline_grace_s: Grace = 0) -> Response:
        """EV-ChART module 3: per port and month of the quarter (station-local months), the
        trailing-12-month NEVI uptime ending with that month. Months that have not ended at the
        station are left out (their figure is not final)."""
        now = datetime.now(UTC)
        ports = await fleet_ports(db())
        months = [f"{year}-{month:02d}" for month in range(3 * (quarter - 1) + 1, 3 * quarter + 1)]
        by_zone: dict[str, list[FleetPort]] = {}
        for port in ports:
            by_zone.setdefault(port.info.time_zone, []).append(port)
        reads = asyncio.Semaphore(READ_CONCURRENCY)   # shared by the zones' reads
        tasks = {}
        async with asyncio.TaskGroup() as tg:
            for zone, members in by_zone.items():
                ended = [w for w in (nevi_window(m, zone) for m in months) if w[1] <= now]
                if ended:
                    tasks[zone] = (ended, tg.create_task(fleet_uptime_windows(
                        db(), members, "nevi", ended, now=now, offline_grace_s=offline_grace_s, reads=reads),
                        name="evchart-module-3-zone"))
        rows_of: dict[PortKey, list[tuple[object, ...]]] = {}
        for ended, task in tasks.values():
            for port, per_window in task.result():
                rows_of[port.key] = [
                    (port.station_id, port.uid, network_provider, evchart.evchart_time(w[0]),
                     evchart.evchart_time(w[1]), evchart.decimal2(result.uptime_pct),
                     evchart.decimal2(result.t_outage_min), evchart.decimal2(result.t_excluded_min))
                    for w, (result, _) in zip(ended, per_window, strict=True)]
        rows = [row for port in ports for row in rows_of.get(port.key, [])]
        return csv_response(evchart.to_csv(evchart.MODULE_3, rows), f"module3_{year}_Q{quarter}.csv")

    @router.get("/exports/ev-chart/module-4.csv", response_class=Response)
    async def evchart_module_4(year: Year, quarter: Quarter, network_provider: Provider = "other",
                               with_exclusions: bool = False, offline_grace_s: Grace = 0) -> Response:
        """EV-ChART module 4: one row per outage with minutes in the quarter (station-local), the
        minutes inside the quarter; ``outage_id`` is the outage's start in the data, as in
        ``/outages``. A quarter in progress is counted up to now (an outage in progress has its
        minutes so far)."""
        now = datetime.now(UTC)
        rows: list[tuple[object, ...]] = []
        opening: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
        for port, result, applied in await fleet_uptime(
                db(), await fleet_ports(db()), "generic",
                lambda info: evchart.quarter_bounds(year, quarter, info.time_zone), now=now,
                offline_grace_s=offline_grace_s):
            computed = computed_part((result.period_start, result.period_end), now)
            for outage in result.outages:
                if outage.minutes < 0.01:   # EV-ChART: outage_duration ≥ 0.01
                    continue
                row: tuple[object, ...] = (port.station_id, port.uid, network_provider, outage.outage_id,
                                           evchart.decimal2(outage.minutes))
                if with_exclusions:
                    sig = (repr(port.info.opening_hours), port.info.time_zone)
                    if sig not in opening:
                        opening[sig] = opening_intervals(port.info.opening_hours, port.info.time_zone, computed)
                    excluded = outage_exclusion(outage, applied, opening[sig], computed)
                    row = (*row, "true" if excluded.reason else "false", EXCLUSION_REASONS.get(excluded.reason or ""),
                           _notes(outage, excluded.excluded_min, excluded.notes) if excluded.reason else "")
                rows.append(row)
        columns = evchart.MODULE_4_EXCLUSIONS if with_exclusions else evchart.MODULE_4
        return csv_response(evchart.to_csv(columns, rows), f"module4_{year}_Q{quarter}.csv")

    @router.get("/uptime")
    async def fleet_uptime_report(
        window: Window,
        method: Literal["nevi", "generic", "uk"] = "nevi",
        report_month: ReportMonth = None,
        group_by: Literal["port", "station", "network"] = "station",
        location_id: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
        offline_grace_s: Grace = 0, offline_counts_as_outage: bool = True,
    ) -> dict[str, Any]:
        """Uptime of many ports, per port, per station or over the network: recomputed from the
        ports' minutes (Σ denominator − Σ (T_outage − T_excluded)) / Σ denominator, over the ports
        that have a figure (NEVI: eligible, period complete, state known throughout); the others
        are counted by reason. Windows (NEVI's months, local_date/month/year) are in each
        station's time zone."""
        spec = UptimeWindow(report_month, window)
        spec.check(method)
        ports = await fleet_ports(db(), location_id=location_id)
        if location_id is not None and not ports:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ports at location {location_id}")
        results = await fleet_uptime(db(), ports, method, lambda info: spec.resolve(method, info.time_zone)[0],
                                     now=datetime.now(UTC), offline_grace_s=offline_grace_s,
                                     offline_counts=offline_counts_as_outage)
        groups: dict[str, list[UptimeResult]] = {}
        for port, result, _ in results:
            if group_by == "port":
                groups[f"{port.info.charge_point_id}/{port.info.evse_id}"] = [result]
            else:
                groups.setdefault(port.station_id if group_by == "station" else "network", []).append(result)

        def group(name: str, members: list[UptimeResult]) -> dict[str, Any]:
            body = aggregate(members)
            until = body["computed_until"]
            return {"group": name, **body, "computed_until": utc_text(until) if isinstance(until, datetime) else None}

        return {"method": method, "group_by": group_by, "report_month": report_month,
                "window": spec.resolve(method, "UTC")[1],
                "groups": [group(name, members) for name, members in groups.items()],
                "formula_version": FORMULA_VERSION, "generated_at": utc_text(datetime.now(UTC))}

    router.include_router(build_utilization_router(db=db))

    return router


def _notes(outage: Outage, excluded_min: float, notes: str) -> str:
    """EV-ChART excluded_outage_notes (≤ 255 characters): the part excluded, then the recorded notes."""
    head = "" if excluded_min >= outage.minutes - 0.005 else f"{excluded_min:.2f} of {outage.minutes:.2f} min excluded"
    text = "; ".join(part for part in (head, notes.strip()) if part)
    return text[:EVCHART_NOTES_CHARS]

