"""Utilization API: per port, station and network, bucketed in local time, and the
hour-of-week profile (reporting.md §5.4, §7.2 B).

Occupied: plug-in to plug-out (1.6 Preparing … Finishing, 2.0.1 Occupied); charging: energy
flowing (1.6 Charging, 2.0.1 chargingState Charging); idle = occupied − charging. Percentages
are of the available minutes: the station's access hours (``basis=operating_hours``) or the
whole window (``basis=calendar``). Network and station figures are recomputed from minutes
and kWh, never averaged from port percentages. Capacity factor = the energy that flowed in
the bucket ÷ (rated kW × available hours). A session succeeds with ≥ 0.5 kWh and no failure
stop reason (reporting.md §5.4; a Faulted status during a session is not checked yet).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from csms.api.common import CpId, utc_text
from csms.reporting import FORMULA_VERSION, round2
from csms.reporting.calendar import WindowError, hour_of_week, report_bounds, requested_window
from csms.reporting.fleet import FleetPort, PortKey, computed_part
from csms.reporting.hours import opening_intervals
from csms.reporting.usage import BucketUsage, PortRef, bucket_figures, closed_quarters, percent
from csms.store.report_fleet import READ_CONCURRENCY, fleet_ports, location_time_zone
from csms.store.report_uptime import known_since_of
from csms.store.report_usage import usage
from schemas.intervals import Interval, intersect, subtract

Bucket = Literal["none", "hour", "day", "week", "month"]
Basis = Literal["operating_hours", "calendar"]
LocationId = Annotated[str, Path(min_length=1, max_length=36)]


@dataclass(frozen=True, slots=True)
class WindowQuery:
    """A report window as the caller gives it: ``from``/``to`` (instants with an offset), or a
    station-local ``local_date`` (YYYY-MM-DD), ``month`` (YYYY-MM) or ``year`` (YYYY) — the
    station's zone is applied by the server, so callers need not compute DST offsets."""

    start: datetime | None = None
    end: datetime | None = None
    local_date: str | None = None
    month: str | None = None
    year: str | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.start, self.end, self.local_date, self.month, self.year))

    def window(self, zone: ZoneInfo) -> tuple[Interval, str]:
        """Raises ``WindowError`` (a 400) for a window the API refuses."""
        return requested_window(zone, start=self.start, end=self.end, local_date=self.local_date,
                                month=self.month, year=self.year)


def _window_query(
    start: Annotated[datetime | None, Query(alias="from", description="window start, with a UTC offset")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="window end (exclusive), with a UTC offset")] = None,
    local_date: Annotated[str | None, Query(max_length=10, description="a station-local day, YYYY-MM-DD")] = None,
    month: Annotated[str | None, Query(max_length=7, description="a station-local month, YYYY-MM")] = None,
    year: Annotated[str | None, Query(max_length=4, description="a station-local calendar year, YYYY")] = None,
) -> WindowQuery:
    return WindowQuery(start, end, local_date, month, year)


Window = Annotated[WindowQuery, Depends(_window_query)]


def _resolve(query: WindowQuery, zone: ZoneInfo) -> Interval:
    try:
        return query.window(zone)[0]
    except WindowError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def figures(b: BucketUsage, zone: ZoneInfo) -> dict[str, Any]:
    """A bucket as the API gives it: its bounds (also in ``zone``), then its figures."""
    return {"bucket_start": utc_text(b.start), "bucket_start_local": b.start.astimezone(zone).isoformat(),
            "bucket_end": utc_text(b.end), **bucket_figures(b)}


def _refs(ports: Sequence[FleetPort], window: Interval, basis: str) -> list[PortRef]:
    """Per port, the station's closed hours inside the window (none for ``basis=calendar``)."""
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


def _seconds(intervals: Sequence[Interval]) -> float:
    return sum((e - s).total_seconds() for s, e in intervals)


@dataclass(slots=True)
class _Bucket:
    figures: BucketUsage
    full_end: datetime          # where the bucket ends in the requested window (after now: cut)
    known_s: float              # port-seconds with the state known
    whole_s: float              # port-seconds of the bucket as requested

    def row(self, zone: ZoneInfo) -> dict[str, Any]:
        return {**figures(self.figures, zone), "complete": self.figures.end == self.full_end,
                "data_completeness": round(self.known_s / self.whole_s, 4) if self.whole_s > 0 else 0.0}


def _discount_unknown(buckets: list[BucketUsage], total: BucketUsage, refs: Sequence[PortRef],
                      unknown: dict[PortKey, list[Interval]]) -> list[float]:
    """Take the minutes before each port's first data out of the available minutes and the
    capacity (they are unknown, in no denominator): those of them that ``usage`` counted as
    available, i.e. outside the closed quarter hours (``csms.reporting.usage``: a quarter hour
    is closed when it starts in closed hours). Returns the unknown port-seconds per bucket."""
    starts = [b.start for b in buckets]
    unknown_s = [0.0] * len(buckets)
    for ref in refs:
        head = unknown.get((ref.charge_point_id, ref.evse_id))
        if not head:
            continue
        shut = closed_quarters(ref.closed)
        for part, exact in ((subtract(head, shut), False), (head, True)):
            for lo, hi in part:
                i = max(0, bisect.bisect_right(starts, lo) - 1)
                while i < len(buckets) and buckets[i].start < hi:
                    b = buckets[i]
                    cut = _seconds(intersect([(lo, hi)], [(b.start, b.end)]))
                    if exact:
                        unknown_s[i] += cut
                    elif cut:
                        b.avail_s = max(0.0, b.avail_s - cut)
                        b.capacity_kwh = max(0.0, b.capacity_kwh - ref.rated_kw * cut / 3600.0)
                        total.avail_s = max(0.0, total.avail_s - cut)
                        total.capacity_kwh = max(0.0, total.capacity_kwh - ref.rated_kw * cut / 3600.0)
                    i += 1
    return unknown_s


@dataclass(frozen=True, slots=True)
class _Frame:
    """A requested window, the part of it that has happened, and (being read) each port's
    unknown head: read while the figures are, it is applied after them."""

    window: Interval
    computed: Interval
    heads: asyncio.Task[dict[PortKey, list[Interval]]]

    @property
    def complete(self) -> bool:
        return self.computed[1] == self.window[1]

    def bounds(self, bucket: str, zone: ZoneInfo) -> tuple[list[datetime], list[datetime]]:
        """(bucket bounds of the computed part, bucket bounds of the whole window)."""
        try:
            full = report_bounds(self.window, bucket, zone)
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        return [b for b in full if b < self.computed[1]] + [self.computed[1]], full

    async def head(self, ports: Sequence[FleetPort]) -> dict[str, Any]:
        """Share of the ports' minutes of the requested window with their state known."""
        whole = _seconds([self.window]) * len(ports)
        known = _seconds([self.computed]) * len(ports) - sum(_seconds(v) for v in (await self.heads).values())
        return {"period_start": utc_text(self.window[0]), "period_end": utc_text(self.window[1]),
                "complete": self.complete, "computed_until": utc_text(self.computed[1]),
                "data_completeness": round(known / whole, 4) if whole > 0 else 0.0}


def build_utilization_router(*, db: Callable[[], asyncpg.Pool]) -> APIRouter:
    """``db()`` gives the pool (or raises 503)."""
    router = APIRouter()

    async def heads(ports: Sequence[FleetPort], computed: Interval) -> dict[PortKey, list[Interval]]:
        known = await known_since_of(db(), [p.key for p in ports], computed)
        unknown = {key: [computed] if since is None else subtract([computed], [(since, computed[1])])
                   for key, since in known.items()}
        return {k: v for k, v in unknown.items() if v}

    @asynccontextmanager
    async def frame(ports: Sequence[FleetPort], window: Interval) -> AsyncIterator[_Frame]:
        computed = computed_part(window, datetime.now(UTC))
        task = asyncio.create_task(heads(ports, computed), name="utilization-known-since")
        try:
            yield _Frame(window, computed, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def buckets_of(ports: list[FleetPort], f: _Frame, bucket: str, basis: str, zone: ZoneInfo, *,
                         with_peak: bool = False, with_idle: bool = True) -> tuple[list[_Bucket], BucketUsage]:
        """Figures per bucket over the computed part, and the total."""
        bounds, full = f.bounds(bucket, zone)
        if f.computed[1] <= f.computed[0] or not ports:
            return [], BucketUsage(f.window[0], f.computed[1], ports=len(ports))
        refs = _refs(ports, f.computed, basis)
        buckets, total = await usage(db(), refs, bounds, with_peak=with_peak, with_idle=with_idle, zone=zone)
        unknown_s = _discount_unknown(buckets, total, refs, await f.heads)
        return [_Bucket(b, full[i + 1], _seconds([(b.start, b.end)]) * len(ports) - unknown_s[i],
                        _seconds([(b.start, full[i + 1])]) * len(ports)) for i, b in enumerate(buckets)], total

    async def report(ports: list[FleetPort], window: Interval, bucket: str, basis: str, zone: ZoneInfo,
                     with_peak: bool) -> dict[str, Any]:
        async with frame(ports, window) as f:
            buckets, total = await buckets_of(ports, f, bucket, basis, zone, with_peak=with_peak)
            head = await f.head(ports)
        body = figures(total, zone)
        for key in ("bucket_start", "bucket_start_local", "bucket_end"):
            body.pop(key)
        return {**head, "time_zone": zone.key, "bucket": bucket, "basis": basis, **body,
                "buckets": [b.row(zone) for b in buckets] if bucket != "none" else [],
                "formula_version": FORMULA_VERSION, "generated_at": utc_text(datetime.now(UTC))}

    async def station(location_id: str) -> tuple[list[FleetPort], ZoneInfo]:
        time_zone = await location_time_zone(db(), location_id)
        if time_zone is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no location {location_id}")
        return await fleet_ports(db(), location_id=location_id), ZoneInfo(time_zone)

    @router.get("/stations/{location_id}/utilization")
    async def station_utilization(location_id: LocationId, window: Window,
                                  bucket: Bucket = "none", basis: Basis = "operating_hours") -> dict[str, Any]:
        """Occupied/charging/idle time, energy, capacity factor, sessions, success rate, post-charge
        idle and peak concurrency of a station's ports, per bucket in the station's time zone.
        Window: ``from``/``to``, or a station-local ``local_date``, ``month`` or ``year``."""
        _resolve(window, ZoneInfo("UTC"))
        ports, zone = await station(location_id)
        return {"location_id": location_id, **await report(ports, _resolve(window, zone), bucket, basis, zone, True)}

    @router.get("/ports/{cp_id}/{evse_id}/utilization")
    async def port_utilization(cp_id: CpId,
                               evse_id: Annotated[int, Path(ge=1, le=64)],
                               window: Window, bucket: Bucket = "none",
                               basis: Basis = "operating_hours") -> dict[str, Any]:
        """The same figures for one port (EVSE), in its station's time zone."""
        _resolve(window, ZoneInfo("UTC"))
        ports = await fleet_ports(db(), ports=[(cp_id, evse_id)])
        if not ports:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no port {cp_id}/{evse_id}")
        zone = ZoneInfo(ports[0].info.time_zone)
        return {"charge_point_id": cp_id, "evse_id": evse_id,
                **await report(ports, _resolve(window, zone), bucket, basis, zone, True)}

    @router.get("/network/utilization")
    async def network_utilization(window: Window, bucket: Bucket = "none",
                                  basis: Basis = "operating_hours",
                                  tz: Annotated[str, Query(max_length=64)] = "station") -> dict[str, Any]:
        """All registered ports; each station's own access hours apply. ``tz=station`` (default):
        day, week and month buckets are each station's local calendar periods (a network's
        "1 March" is 1 March at every station), labelled by local start date; hour buckets need
        one zone (``tz=<IANA zone>``), which also puts every bucket in that zone. The window is
        ``from``/``to``, or ``local_date``/``month``/``year`` in ``tz`` (which then must be a zone).
        Peak concurrency is per station only (null here); post-charge idle percentiles per
        bucket are given when the buckets come from one zone."""
        if tz != "station" and tz not in available_timezones():
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown time zone {tz!r}")
        if tz == "station" and window.given() and window.start is None and window.end is None:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "local_date, month and year need one zone here: "
                                "tz=<IANA zone> (or give from and to)")
        requested = _resolve(window, ZoneInfo("UTC" if tz == "station" else tz))
        ports = await fleet_ports(db())
        if tz != "station":
            return await report(ports, requested, bucket, basis, ZoneInfo(tz), False)
        if bucket == "hour":
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "hour buckets need one zone: tz=<IANA zone>")
        by_zone: dict[str, list[FleetPort]] = {}
        for port in ports:
            by_zone.setdefault(port.info.time_zone, []).append(port)
        if len(by_zone) <= 1:
            zone = ZoneInfo(next(iter(by_zone), "UTC"))
            return {**await report(ports, requested, bucket, basis, zone, False), "time_zone": "station"}
        merged: dict[str, _Bucket] = {}
        reads = asyncio.Semaphore(READ_CONCURRENCY)   # the zones are computed a few at once, on the pool

        async def zone_part(zone_name: str, members: list[FleetPort],
                            f: _Frame) -> tuple[ZoneInfo, list[_Bucket], BucketUsage]:
            zone = ZoneInfo(zone_name)
            async with reads:
                # Percentiles of different zones' buckets do not combine (_add drops them): not computed.
                return (zone, *await buckets_of(members, f, bucket, basis, zone, with_idle=False))

        async with frame(ports, requested) as f:
            total = BucketUsage(requested[0], f.computed[1], ports=len(ports))
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(zone_part(zone_name, members, f), name="network-utilization-zone")
                         for zone_name, members in by_zone.items()]
            parts = [task.result() for task in tasks]
            head = await f.head(ports)
        for zone, buckets, part in parts:
            _add(total, part)
            for b in buckets if bucket != "none" else []:
                label = b.figures.start.astimezone(zone).date().isoformat()
                if label not in merged:
                    merged[label] = _Bucket(BucketUsage(b.figures.start, b.figures.end), b.full_end, 0.0, 0.0)
                target = merged[label]
                target.figures.start = min(target.figures.start, b.figures.start)
                target.figures.end = max(target.figures.end, b.figures.end)
                target.full_end = max(target.full_end, b.full_end)
                target.figures.ports += b.figures.ports
                target.known_s += b.known_s
                target.whole_s += b.whole_s
                _add(target.figures, b.figures)
        body = figures(total, ZoneInfo("UTC"))
        for key in ("bucket_start", "bucket_start_local", "bucket_end"):
            body.pop(key)
        rows = []
        for label, b in sorted(merged.items()):
            item = b.row(ZoneInfo("UTC"))
            item["bucket_start_local"] = label
            rows.append(item)
        return {**head, "time_zone": "station", "bucket": bucket, "basis": basis, **body, "buckets": rows,
                "formula_version": FORMULA_VERSION, "generated_at": utc_text(datetime.now(UTC))}

    @router.get("/stations/{location_id}/utilization/profile")
    async def station_profile(location_id: LocationId, window: Window,
                              basis: Basis = "operating_hours") -> dict[str, Any]:
        """Hour-of-week duty cycle: occupied and charging share of the available minutes per
        local weekday (1 = Monday) and hour, over the window (the part that has happened)."""
        _resolve(window, ZoneInfo("UTC"))
        ports, zone = await station(location_id)
        async with frame(ports, _resolve(window, zone)) as f:
            buckets, _ = await buckets_of(ports, f, "hour", basis, zone, with_idle=False)
            head = await f.head(ports)
        slots: dict[tuple[int, int], list[float]] = {}
        for b in (x.figures for x in buckets):
            slot = slots.setdefault(hour_of_week(b.start, zone), [0.0, 0.0, 0.0, 0.0])
            slot[0] += b.avail_s
            slot[1] += b.occupied_s
            slot[2] += b.charging_s
            slot[3] += b.energy_kwh
        return {"location_id": location_id, "time_zone": zone.key, **head, "basis": basis,
                "slots": [{"weekday": day, "hour": hour, "avail_min": round2(v[0] / 60),
                           "u_occupied_pct": percent(v[1], v[0]), "u_charging_pct": percent(v[2], v[0]),
                           "energy_kwh": round(v[3], 3)}
                          for (day, hour), v in sorted(slots.items())],
                "formula_version": FORMULA_VERSION, "generated_at": utc_text(datetime.now(UTC))}

    return router
