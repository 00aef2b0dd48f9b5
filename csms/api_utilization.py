"""Utilization API: per port, station and network, bucketed in local time, and the
hour-of-week profile (reporting.md §5.4, §7.2 B).

Occupied: plug-in to plug-out (1.6 Preparing … Finishing, 2.0.1 Occupied); charging: energy
flowing (1.6 Charging, 2.0.1 chargingState Charging); idle = occupied − charging. Percentages
are of the available minutes: the station's access hours (``basis=operating_hours``) or the
whole window (``basis=calendar``). Network and station figures are recomputed from minutes
and kWh, never averaged from port percentages. Capacity factor = kWh of sessions started in
the bucket ÷ (rated kW × available hours). A session succeeds with ≥ 0.5 kWh and no failure
stop reason (reporting.md §5.4; a Faulted status during a session is not checked yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, status

from csms.reporting import FORMULA_VERSION, round2
from csms.reporting.calendar import hour_of_week, report_bounds
from csms.reporting.fleet import FleetPort, fleet_ports
from csms.reporting.hours import opening_intervals
from csms.reporting.usage import BucketUsage, PortRef, usage
from schemas.intervals import Interval, subtract

Bucket = Literal["none", "hour", "day", "week", "month"]
Basis = Literal["operating_hours", "calendar"]
LocationId = Annotated[str, Path(min_length=1, max_length=36)]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pct(part: float, whole: float) -> float | None:
    return round2(part / whole * 100) if whole > 0 else None


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round2(seconds / 60)


def figures(b: BucketUsage, zone: ZoneInfo) -> dict[str, Any]:
    occupied, charging = b.occupied_s / 60, b.charging_s / 60
    idle = max(0.0, occupied - charging)
    avail = b.avail_s / 60
    port_days = b.ports * (b.end - b.start).total_seconds() / 86400
    return {
        "bucket_start": _iso(b.start), "bucket_start_local": b.start.astimezone(zone).isoformat(),
        "bucket_end": _iso(b.end), "ports": b.ports, "avail_min": round2(avail),
        "occupied_min": round2(occupied), "charging_min": round2(charging), "idle_min": round2(idle),
        "u_occupied_pct": _pct(occupied, avail), "u_charging_pct": _pct(charging, avail),
        "u_idle_pct": _pct(idle, avail), "energy_kwh": round(b.energy_kwh, 3),
        "capacity_factor_pct": _pct(b.energy_kwh, b.capacity_kwh), "sessions": b.sessions,
        "sessions_per_port_day": round(b.sessions / port_days, 3) if port_days else None,
        "kwh_per_port_day": round(b.energy_kwh / port_days, 3) if port_days else None,
        "success_rate_pct": _pct(b.successes, b.sessions),
        "median_post_charge_idle_min": _minutes(b.median_idle_s), "p90_post_charge_idle_min": _minutes(b.p90_idle_s),
        "peak_concurrency": b.peak_concurrency,
    }


def _refs(ports: Sequence[FleetPort], window: Interval, basis: str) -> list[PortRef]:
    closed_by_sig: dict[tuple[str, str], tuple[Interval, ...]] = {}
    refs = []
    for p in ports:
        sig = (repr(p.info.opening_hours), p.info.time_zone)
        if sig not in closed_by_sig:
            opening = opening_intervals(p.info.opening_hours, p.info.time_zone, window) \
                if basis == "operating_hours" else [window]
            closed_by_sig[sig] = tuple(subtract([window], opening))
        refs.append(PortRef(p.info.charge_point_id, p.info.evse_id, p.rated_kw, closed_by_sig[sig], p.info.time_zone))
    return refs


def _add(target: BucketUsage, part: BucketUsage) -> None:
    """Sums of minutes, kWh and counts; percentiles do not add up and are dropped."""
    for name in ("avail_s", "occupied_s", "charging_s", "capacity_kwh", "energy_kwh", "sessions", "successes"):
        setattr(target, name, getattr(target, name) + getattr(part, name))
    target.median_idle_s = target.p90_idle_s = target.peak_concurrency = None


def build_utilization_router(*, db: Any, window_of: Any) -> APIRouter:
    """``db()`` gives the pool (or raises 503); ``window_of(from, to)`` validates a window."""
    router = APIRouter()

    async def report(ports: list[FleetPort], window: Interval, bucket: str, basis: str, zone: ZoneInfo,
                     with_peak: bool) -> dict[str, Any]:
        try:
            bounds = report_bounds(window, bucket, zone)
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        pool: asyncpg.Pool = db()
        buckets, total = await usage(pool, _refs(ports, window, basis), bounds, with_peak=with_peak, zone=zone)
        body = figures(total, zone)
        for key in ("bucket_start", "bucket_start_local", "bucket_end"):
            body.pop(key)
        return {"period_start": _iso(window[0]), "period_end": _iso(window[1]), "time_zone": zone.key,
                "bucket": bucket, "basis": basis, **body,
                "buckets": [figures(b, zone) for b in buckets] if bucket != "none" else [],
                "formula_version": FORMULA_VERSION, "generated_at": _iso(datetime.now(UTC))}

    async def station(location_id: str) -> tuple[list[FleetPort], ZoneInfo]:
        row = await db().fetchrow("SELECT time_zone FROM locations WHERE id = $1", location_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no location {location_id}")
        return await fleet_ports(db(), location_id=location_id), ZoneInfo(row["time_zone"])

    @router.get("/stations/{location_id}/utilization")
    async def station_utilization(location_id: LocationId, start: Annotated[datetime, Query(alias="from")],
                                  end: Annotated[datetime, Query(alias="to")], bucket: Bucket = "none",
                                  basis: Basis = "operating_hours") -> dict[str, Any]:
        """Occupied/charging/idle time, energy, capacity factor, sessions, success rate, post-charge
        idle and peak concurrency of a station's ports, per bucket in the station's time zone."""
        window = window_of(start, end)
        ports, zone = await station(location_id)
        return {"location_id": location_id, **await report(ports, window, bucket, basis, zone, True)}

    @router.get("/ports/{cp_id}/{evse_id}/utilization")
    async def port_utilization(cp_id: Annotated[str, Path(min_length=1, max_length=48, pattern=r"^[^:/]+$")],
                               evse_id: Annotated[int, Path(ge=1, le=64)],
                               start: Annotated[datetime, Query(alias="from")],
                               end: Annotated[datetime, Query(alias="to")], bucket: Bucket = "none",
                               basis: Basis = "operating_hours") -> dict[str, Any]:
        """The same figures for one port (EVSE), in its station's time zone."""
        window = window_of(start, end)
        ports = await fleet_ports(db(), ports=[(cp_id, evse_id)])
        if not ports:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no port {cp_id}/{evse_id}")
        zone = ZoneInfo(ports[0].info.time_zone)
        return {"charge_point_id": cp_id, "evse_id": evse_id,
                **await report(ports, window, bucket, basis, zone, True)}

    @router.get("/network/utilization")
    async def network_utilization(start: Annotated[datetime, Query(alias="from")],
                                  end: Annotated[datetime, Query(alias="to")], bucket: Bucket = "none",
                                  basis: Basis = "operating_hours",
                                  tz: Annotated[str, Query(max_length=64)] = "station") -> dict[str, Any]:
        """All registered ports; each station's own access hours apply. ``tz=station`` (default):
        day, week and month buckets are each station's local calendar periods (a network's
        "1 March" is 1 March at every station), labelled by local start date; hour buckets need
        one zone (``tz=<IANA zone>``), which also puts every bucket in that zone. Peak concurrency
        is per station only (null here); post-charge idle percentiles per bucket are given when
        the buckets come from one zone."""
        window = window_of(start, end)
        ports = await fleet_ports(db())
        if tz != "station":
            if tz not in available_timezones():
                raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown time zone {tz!r}")
            return await report(ports, window, bucket, basis, ZoneInfo(tz), False)
        if bucket == "hour":
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "hour buckets need one zone: tz=<IANA zone>")
        by_zone: dict[str, list[FleetPort]] = {}
        for port in ports:
            by_zone.setdefault(port.info.time_zone, []).append(port)
        if len(by_zone) <= 1:
            zone = ZoneInfo(next(iter(by_zone), "UTC"))
            return {**await report(ports, window, bucket, basis, zone, False), "time_zone": "station"}
        merged: dict[str, BucketUsage] = {}
        total = BucketUsage(window[0], window[1], ports=len(ports))
        for zone_name, members in by_zone.items():
            zone = ZoneInfo(zone_name)
            # Percentiles of different zones' buckets do not combine (_add drops them): not computed.
            buckets, part = await usage(db(), _refs(members, window, basis), report_bounds(window, bucket, zone),
                                        with_idle=False, zone=zone)
            _add(total, part)
            for b in buckets if bucket != "none" else []:
                label = b.start.astimezone(zone).date().isoformat()
                if label not in merged:
                    merged[label] = BucketUsage(b.start, b.end)
                target = merged[label]
                target.start, target.end = min(target.start, b.start), max(target.end, b.end)
                target.ports += b.ports
                _add(target, b)
        body = figures(total, ZoneInfo("UTC"))
        for key in ("bucket_start", "bucket_start_local", "bucket_end"):
            body.pop(key)
        rows = []
        for label, b in sorted(merged.items()):
            row = figures(b, ZoneInfo("UTC"))
            row["bucket_start_local"] = label
            rows.append(row)
        return {"period_start": _iso(window[0]), "period_end": _iso(window[1]), "time_zone": "station",
                "bucket": bucket, "basis": basis, **body, "buckets": rows, "formula_version": FORMULA_VERSION,
                "generated_at": _iso(datetime.now(UTC))}

    @router.get("/stations/{location_id}/utilization/profile")
    async def station_profile(location_id: LocationId, start: Annotated[datetime, Query(alias="from")],
                              end: Annotated[datetime, Query(alias="to")],
                              basis: Basis = "operating_hours") -> dict[str, Any]:
        """Hour-of-week duty cycle: occupied and charging share of the available minutes per
        local weekday (1 = Monday) and hour, over the window."""
        window = window_of(start, end)
        ports, zone = await station(location_id)
        buckets, _ = await usage(db(), _refs(ports, window, basis), report_bounds(window, "hour", zone),
                                 with_idle=False, zone=zone)
        slots: dict[tuple[int, int], list[float]] = {}
        for b in buckets:
            slot = slots.setdefault(hour_of_week(b.start, zone), [0.0, 0.0, 0.0, 0.0])
            slot[0] += b.avail_s
            slot[1] += b.occupied_s
            slot[2] += b.charging_s
            slot[3] += b.energy_kwh
        return {"location_id": location_id, "time_zone": zone.key, "period_start": _iso(window[0]),
                "period_end": _iso(window[1]), "basis": basis,
                "slots": [{"weekday": day, "hour": hour, "avail_min": round2(v[0] / 60),
                           "u_occupied_pct": _pct(v[1], v[0]), "u_charging_pct": _pct(v[2], v[0]),
                           "energy_kwh": round(v[3], 3)}
                          for (day, hour), v in sorted(slots.items())],
                "formula_version": FORMULA_VERSION, "generated_at": _iso(datetime.now(UTC))}

    return router
