"""Reporting API (read-only apart from the append-only exclusion log): port uptime and outages.

Every response carries ``formula_version``, ``data_completeness`` and ``generated_at`` so a
figure can be traced to the rules that produced it (reporting.md §7).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, Field, HttpUrl, model_validator

from csms.api_utilization import build_utilization_router
from csms.reporting import FORMULA_VERSION, evchart
from csms.reporting.fleet import FleetPort, aggregate, fleet_port, fleet_ports, fleet_uptime, fleet_uptime_windows
from csms.reporting.queries import PortInfo
from csms.reporting.uptime import EXCLUSION_REASONS, Exclusion, Outage, UptimeResult, nevi_window

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
MAX_WINDOW = timedelta(days=400)

CpId = Annotated[str, Path(min_length=1, max_length=48, pattern=r"^[^:/]+$")]
Year = Annotated[int, Query(ge=2020, le=2100)]
Quarter = Annotated[int, Query(ge=1, le=4)]
Provider = Annotated[str, Query(max_length=64, pattern=r"^[a-z0-9_]+$")]
Grace = Annotated[int, Query(ge=0, le=86400)]
EvseId = Annotated[int, Path(ge=1, le=64)]


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
        return self


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(method: str, report_month: str | None, start: datetime | None, end: datetime | None,
            time_zone: str) -> tuple[datetime, datetime]:
    if method == "nevi":
        if report_month is None or not _MONTH.match(report_month):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "method=nevi needs report_month=YYYY-MM")
        return nevi_window(report_month, time_zone)
    if start is None or end is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"method={method} needs from and to")
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "from and to need a UTC offset")
    if not timedelta(0) < end - start <= MAX_WINDOW:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the window must be positive and at most 400 days")
    return start.astimezone(UTC), end.astimezone(UTC)


def _until_now(window: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    """Nothing is known about the future: a window reaching past now ends now."""
    now = datetime.now(UTC)
    return (window[0], min(window[1], max(now, window[0] + timedelta(seconds=1))))


async def _report(db: asyncpg.Pool, port: FleetPort, method: str, window: tuple[datetime, datetime], *,
                  offline_grace_s: int = 0, offline_counts: bool = True) -> tuple[UptimeResult, list[Exclusion]]:
    """One port's uptime over ``window`` (ending no later than now), and the exclusions it applied."""
    [(_, [(result, applied)])] = await fleet_uptime_windows(
        db, [port], method, [_until_now(window)], offline_grace_s=offline_grace_s, offline_counts=offline_counts)
    return result, applied


def _exclusion_of(outage: Outage, applied: list[Exclusion]) -> str | None:
    return next((e.reason for e in applied if e.start < outage.end and e.end > outage.start), None)


def _view(result: UptimeResult, cp: str, evse: int) -> dict[str, Any]:
    return {
        "charge_point_id": cp, "evse_id": evse, "method": result.method,
        "period_start": _iso(result.period_start), "period_end": _iso(result.period_end),
        "minutes_in_period": round(result.minutes_in_period, 2), "denominator_minutes": result.denominator_minutes,
        "t_outage_min": result.t_outage_min, "t_excluded_min": result.t_excluded_min,
        "excluded_by_reason": result.excluded_by_reason, "uptime_pct": result.uptime_pct,
        "meets_requirement": result.meets_requirement, "eligible": result.eligible,
        "pro_rata_uptime_pct": result.pro_rata_uptime_pct, "data_completeness": result.data_completeness,
        "formula_version": FORMULA_VERSION, "generated_at": _iso(datetime.now(UTC)),
    }


def build_reporting_router(*, pool: asyncpg.Pool | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/reporting", tags=["reporting"])

    def db() -> asyncpg.Pool:
        if pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no database on this role")
        return pool

    @router.get("/ports/{cp_id}/{evse_id}/uptime")
    async def port_uptime(
        cp_id: CpId, evse_id: EvseId,
        method: Literal["nevi", "generic", "uk"] = "nevi",
        report_month: Annotated[str | None, Query(max_length=7)] = None,
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to")] = None,
        offline_grace_s: Annotated[int, Query(ge=0, le=86400)] = 0,
        offline_counts_as_outage: bool = True,
    ) -> dict[str, Any]:
        """Uptime of one port (EVSE): NEVI 23 CFR 680.116(b), any window, or UK PCPR reliability."""
        port = await fleet_port(db(), cp_id, evse_id)
        if port is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no port {cp_id}/{evse_id}")
        result, _ = await _report(db(), port, method, _window(method, report_month, start, end, port.info.time_zone),
                                  offline_grace_s=offline_grace_s, offline_counts=offline_counts_as_outage)
        return _view(result, cp_id, evse_id)

    @router.get("/ports/{cp_id}/{evse_id}/outages")
    async def port_outages(cp_id: CpId, evse_id: EvseId, start: Annotated[datetime, Query(alias="from")],
                           end: Annotated[datetime, Query(alias="to")],
                           offline_grace_s: Annotated[int, Query(ge=0, le=86400)] = 0) -> dict[str, Any]:
        """Every outage of the port in [from, to), with its cause and the exclusion applied to it."""
        port = await fleet_port(db(), cp_id, evse_id)
        if port is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no port {cp_id}/{evse_id}")
        window = _window("generic", None, start, end, port.info.time_zone)
        result, applied = await _report(db(), port, "generic", window, offline_grace_s=offline_grace_s)
        items = []
        for outage in result.outages:
            reason = _exclusion_of(outage, applied)
            items.append({"outage_id": _iso(outage.start), "end": _iso(outage.end),
                          "duration_min": round(outage.minutes, 2), "detection": outage.detection,
                          "cause": outage.cause, "excluded": reason is not None, "exclusion_reason": reason,
                          "exclusion_reason_code_evchart": EXCLUSION_REASONS.get(reason or "")})
        return {"charge_point_id": cp_id, "evse_id": evse_id, "outages": items, "formula_version": FORMULA_VERSION,
                "data_completeness": result.data_completeness, "generated_at": _iso(datetime.now(UTC))}

    @router.post("/ports/{cp_id}/{evse_id}/exclusions", status_code=status.HTTP_201_CREATED)
    async def add_exclusion(cp_id: CpId, evse_id: EvseId, body: ExclusionIn) -> dict[str, Any]:
        """Record why an outage should not count (append-only; a later entry for the same span wins)."""
        if await fleet_port(db(), cp_id, evse_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no port {cp_id}/{evse_id}")
        row = await db().fetchrow(
            """INSERT INTO outage_exclusions (charge_point_id, evse_id, starts_at, ends_at, reason, notes,
                                              evidence_urls, claimed_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at""",
            cp_id, evse_id, body.starts_at, body.ends_at, body.reason, body.notes,
            [str(u) for u in body.evidence_urls], body.claimed_by)
        assert row is not None
        return {"id": row["id"], "created_at": _iso(row["created_at"])}

    @router.get("/ports/{cp_id}/{evse_id}/exclusions")
    async def list_exclusions(cp_id: CpId, evse_id: EvseId) -> list[dict[str, Any]]:
        """The whole audit trail of exclusions for the port, oldest first."""
        rows = await db().fetch(
            "SELECT id, starts_at, ends_at, reason, notes, evidence_urls, claimed_by, created_at "
            "FROM outage_exclusions WHERE charge_point_id = $1 AND evse_id = $2 ORDER BY id LIMIT 10000",
            cp_id, evse_id)
        return [{**dict(r), "starts_at": _iso(r["starts_at"]), "ends_at": _iso(r["ends_at"]),
                 "created_at": _iso(r["created_at"])} for r in rows]

    @router.get("/exports/ev-chart/module-2.csv", response_class=Response)
    async def evchart_module_2(year: Year, quarter: Quarter, network_provider: Provider = "other") -> Response:
        """EV-ChART module 2: one row per session that started in the quarter."""
        start, end = evchart.quarter_bounds(year, quarter)
        # Peaks in one pass over the quarter's power samples (chunk exclusion on the time range;
        # a correlated sub-query per session costs a planning round per session).
        rows = await db().fetch(
            """WITH peaks AS (
                   SELECT m.charge_point_id, m.transaction_uid, max(m.value) / 1000 AS peak_kw FROM meter_samples m
                   WHERE m.measurand = 'Power.Active.Import' AND m.phase = '' AND m.transaction_uid <> ''
                     AND m.time >= $1::timestamptz AND m.time < $2::timestamptz + interval '2 days'
                   GROUP BY 1, 2)
               SELECT COALESCE(c.location_id, t.charge_point_id) AS station_id, e.uid AS port_id,
                      t.charge_point_id, t.transaction_uid, t.connector_id, t.started_at, t.stopped_at,
                      t.stop_reason, t.energy_wh::float8 / 1000 AS energy_kwh, tok.token_type, pk.peak_kw
               FROM transactions t JOIN charge_points c ON c.id = t.charge_point_id
               LEFT JOIN evses e ON e.charge_point_id = t.charge_point_id AND e.evse_id = t.evse_id
               LEFT JOIN id_tokens tok ON tok.id_token = t.id_token
               LEFT JOIN peaks pk ON pk.charge_point_id = t.charge_point_id AND pk.transaction_uid = t.transaction_uid
               WHERE t.started_at >= $1 AND t.started_at < $2 ORDER BY t.started_at, t.charge_point_id""",
            start, end)
        body = evchart.to_csv(evchart.MODULE_2, (
            (r["station_id"], r["port_id"] or f"{r['charge_point_id']}*{r['connector_id'] or 0}", network_provider,
             r["charge_point_id"], r["transaction_uid"], r["connector_id"], evchart.evchart_time(r["started_at"]),
             evchart.evchart_time(r["stopped_at"]), evchart.session_error(r["stop_reason"], r["energy_kwh"]), "",
             evchart.decimal2(r["energy_kwh"]), evchart.decimal2(r["peak_kw"]),
             evchart.PAYMENT_METHODS.get(r["token_type"] or "", "other"), "") for r in rows))
        return _csv(body, f"module2_{year}_Q{quarter}.csv")

    @router.get("/exports/ev-chart/module-3.csv", response_class=Response)
    async def evchart_module_3(year: Year, quarter: Quarter, network_provider: Provider = "other",
                               offline_grace_s: Grace = 0) -> Response:
        """EV-ChART module 3: per port, three rows — the trailing-12-month NEVI uptime at each month of the quarter."""
        windows = [_until_now(nevi_window(f"{year}-{month:02d}", "UTC"))
                   for month in range(3 * (quarter - 1) + 1, 3 * quarter + 1)]
        labels = [nevi_window(f"{year}-{month:02d}", "UTC") for month in range(3 * (quarter - 1) + 1, 3 * quarter + 1)]
        rows = []
        for port, per_window in await fleet_uptime_windows(db(), await fleet_ports(db()), "nevi", windows,
                                                           offline_grace_s=offline_grace_s):
            for label, (result, _) in zip(labels, per_window, strict=True):
                rows.append((port.station_id, port.uid, network_provider, evchart.evchart_time(label[0]),
                             evchart.evchart_time(label[1]), evchart.decimal2(result.uptime_pct),
                             evchart.decimal2(result.t_outage_min), evchart.decimal2(result.t_excluded_min)))
        return _csv(evchart.to_csv(evchart.MODULE_3, rows), f"module3_{year}_Q{quarter}.csv")

    @router.get("/exports/ev-chart/module-4.csv", response_class=Response)
    async def evchart_module_4(year: Year, quarter: Quarter, network_provider: Provider = "other",
                               with_exclusions: bool = False, offline_grace_s: Grace = 0) -> Response:
        """EV-ChART module 4: one row per outage that started in the quarter."""
        window = evchart.quarter_bounds(year, quarter)
        rows: list[tuple[object, ...]] = []
        for port, result, applied in await fleet_uptime(db(), await fleet_ports(db()), "generic",
                                                        _fixed(_until_now(window)),
                                                        offline_grace_s=offline_grace_s):
            for outage in result.outages:
                if not window[0] <= outage.start < window[1] or outage.minutes < 0.01:
                    continue
                row: tuple[object, ...] = (port.station_id, port.uid, network_provider,
                                           evchart.evchart_time(outage.start), evchart.decimal2(outage.minutes))
                if with_exclusions:
                    reason = _exclusion_of(outage, applied)
                    row = (*row, "true" if reason else "false", EXCLUSION_REASONS.get(reason or ""), "")
                rows.append(row)
        columns = evchart.MODULE_4_EXCLUSIONS if with_exclusions else evchart.MODULE_4
        return _csv(evchart.to_csv(columns, rows), f"module4_{year}_Q{quarter}.csv")

    @router.get("/uptime")
    async def fleet_uptime_report(
        method: Literal["nevi", "generic", "uk"] = "nevi",
        report_month: Annotated[str | None, Query(max_length=7)] = None,
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to")] = None,
        group_by: Literal["port", "station", "network"] = "station",
        location_id: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
        offline_grace_s: Grace = 0, offline_counts_as_outage: bool = True,
    ) -> dict[str, Any]:
        """Uptime of many ports, per port, per station or over the network: recomputed from the
        ports' minutes (Σ denominator − Σ (T_outage − T_excluded)) / Σ denominator, over the ports
        that count (NEVI: eligible ones). NEVI windows are in each station's time zone."""
        if method == "nevi":
            _window(method, report_month, None, None, "UTC")  # validates report_month
        else:
            _window(method, None, start, end, "UTC")
        ports = await fleet_ports(db(), location_id=location_id)
        if location_id is not None and not ports:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ports at location {location_id}")
        results = await fleet_uptime(
            db(), ports, method, lambda info: _until_now(_window(method, report_month, start, end, info.time_zone)),
            offline_grace_s=offline_grace_s, offline_counts=offline_counts_as_outage)
        groups: dict[str, list[UptimeResult]] = {}
        for port, result, _ in results:
            if group_by == "port":
                groups[f"{port.info.charge_point_id}/{port.info.evse_id}"] = [result]
            else:
                groups.setdefault(port.station_id if group_by == "station" else "network", []).append(result)
        return {"method": method, "group_by": group_by, "report_month": report_month,
                "groups": [{"group": name, **aggregate(members)} for name, members in groups.items()],
                "formula_version": FORMULA_VERSION, "generated_at": _iso(datetime.now(UTC))}

    router.include_router(build_utilization_router(
        db=db, window_of=lambda start, end: _until_now(_window("generic", None, start, end, "UTC"))))

    return router


def _fixed(window: tuple[datetime, datetime]) -> Callable[[PortInfo], tuple[datetime, datetime]]:
    """The same window for every port (EV-ChART quarters and months are UTC)."""
    return lambda _: window


def _csv(body: bytes, filename: str) -> Response:
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
