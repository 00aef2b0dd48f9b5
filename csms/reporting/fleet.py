"""Uptime of many ports at once, and its aggregation over stations and the network.

Ports are read in batches (a few queries for any number of ports). Aggregates are
recomputed from minutes, never averaged from percentages (reporting.md §5.4):
μ = (Σ D − Σ (T_outage − T_excluded)) / Σ D × 100 over the ports that have a figure — for NEVI
the eligible ones (operational ≥ 12 months) over a complete period with their state known
throughout; for generic D is the known minutes, for the UK method the known access-hours
minutes. The others are counted by the reason they have no figure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from csms.reporting import round2
from csms.reporting.hours import opening_intervals
from csms.reporting.queries import PortInfo, port_timelines
from csms.reporting.uptime import Exclusion, PortTimeline, UptimeResult, outages_over, uptime
from schemas.intervals import Interval

PortKey = tuple[str, int]
BATCH_PORTS = 250
READ_CONCURRENCY = 2   # database connections reading batches at once


@dataclass(frozen=True, slots=True)
class FleetPort:
    info: PortInfo
    station_id: str
    uid: str
    rated_kw: float

    @property
    def key(self) -> PortKey:
        return (self.info.charge_point_id, self.info.evse_id)


async def fleet_ports(db: asyncpg.Pool, *, location_id: str | None = None,
                      ports: Sequence[PortKey] | None = None) -> list[FleetPort]:
    """Registered ports (EVSEs), with their station, time zone, hours and rated power."""
    rows = await db.fetch(
        """SELECT e.charge_point_id, e.evse_id, e.uid, COALESCE(c.location_id, e.charge_point_id) AS station_id,
                  COALESCE(l.time_zone, 'UTC') AS time_zone, l.opening_hours::text AS opening_hours,
                  COALESCE(e.operational_since, l.operational_since, e.created_at) AS operational_since,
                  CASE WHEN e.operational_since IS NOT NULL THEN 'port'
                       WHEN l.operational_since IS NOT NULL THEN 'location' ELSE 'registration' END AS since_source,
                  COALESCE((SELECT max(k.rated_power_w) FROM connectors k WHERE k.charge_point_id = e.charge_point_id
                            AND k.evse_id = e.evse_id), 0)::float8 / 1000 AS rated_kw
           FROM evses e JOIN charge_points c ON c.id = e.charge_point_id
           LEFT JOIN locations l ON l.id = c.location_id
           WHERE ($1::text IS NULL OR c.location_id = $1)
             AND ($2::text[] IS NULL OR (e.charge_point_id, e.evse_id) IN (SELECT * FROM unnest($2::text[], $3::int[])))
           ORDER BY station_id, e.charge_point_id, e.evse_id""", location_id,
        None if ports is None else [p[0] for p in ports], None if ports is None else [p[1] for p in ports])
    out = []
    for r in rows:
        hours = json.loads(r["opening_hours"]) if r["opening_hours"] else None
        info = PortInfo(r["charge_point_id"], r["evse_id"], r["time_zone"], hours, r["operational_since"],
                        r["since_source"])
        out.append(FleetPort(info, r["station_id"], r["uid"], r["rated_kw"]))
    return out


async def fleet_port(db: asyncpg.Pool, charge_point_id: str, evse_id: int) -> FleetPort | None:
    found = await fleet_ports(db, ports=[(charge_point_id, evse_id)])
    return found[0] if found else None


async def exclusions_for(db: asyncpg.Pool, keys: Sequence[PortKey], window: Interval,
                         *, as_of: datetime | None = None) -> dict[PortKey, list[Exclusion]]:
    """Exclusions in force per port: for each (start, end) the latest entry wins; 'withdrawn' cancels."""
    rows = await db.fetch(
        """SELECT DISTINCT ON (x.charge_point_id, x.evse_id, x.starts_at, x.ends_at)
                  x.charge_point_id, x.evse_id, x.starts_at, x.ends_at, x.reason, x.notes
           FROM outage_exclusions x JOIN unnest($1::text[], $2::int[]) AS p(cp, evse)
             ON x.charge_point_id = p.cp AND x.evse_id = p.evse
           WHERE x.ends_at > $3 AND x.starts_at < $4 AND ($5::timestamptz IS NULL OR x.created_at <= $5)
           ORDER BY x.charge_point_id, x.evse_id, x.starts_at, x.ends_at, x.id DESC""",
        [k[0] for k in keys], [k[1] for k in keys], window[0], window[1], as_of)
    out: dict[PortKey, list[Exclusion]] = {}
    for r in rows:
        if r["reason"] != "withdrawn":
            out.setdefault((r["charge_point_id"], r["evse_id"]), []).append(
                Exclusion(r["starts_at"], r["ends_at"], r["reason"], r["notes"]))
    return out


async def fleet_uptime(db: asyncpg.Pool, ports: Sequence[FleetPort], method: str,
                       window_of: Callable[[PortInfo], Interval], *, now: datetime | None, offline_grace_s: int = 0,
                       offline_counts: bool = True) -> list[tuple[FleetPort, UptimeResult, list[Exclusion]]]:
    """Each port's uptime; ports sharing a window (same time zone) are read together."""
    by_window: dict[Interval, list[FleetPort]] = {}
    for port in ports:
        by_window.setdefault(window_of(port.info), []).append(port)
    results: dict[PortKey, tuple[FleetPort, UptimeResult, list[Exclusion]]] = {}
    reads = asyncio.Semaphore(READ_CONCURRENCY)   # shared: the zones' reads overlap, within the limit
    async with asyncio.TaskGroup() as tg:
        parts = [tg.create_task(fleet_uptime_windows(db, group, method, [window], now=now,
                                                     offline_grace_s=offline_grace_s,
                                                     offline_counts=offline_counts, reads=reads),
                                name="fleet-uptime-zone")
                 for window, group in by_window.items()]
    for part in parts:
        for port, [(result, applied)] in part.result():
            results[port.key] = (port, result, applied)
    return [results[p.key] for p in ports]


def computed_part(window: Interval, now: datetime | None) -> Interval:
    """The part of ``window`` that has happened: [start, min(end, now)), empty if it starts after now."""
    return window if now is None else (window[0], min(window[1], max(now, window[0])))


async def fleet_uptime_windows(db: asyncpg.Pool, ports: Sequence[FleetPort], method: str,
                               windows: Sequence[Interval], *, now: datetime | None, offline_grace_s: int = 0,
                               offline_counts: bool = True, reads: asyncio.Semaphore | None = None,
                               ) -> list[tuple[FleetPort, list[tuple[UptimeResult, list[Exclusion]]]]]:
    """Each port's uptime in each of ``windows`` (e.g. the three trailing-12-month windows of a
    quarter), from one read of the span covering them all: the sparse timeline of the whole span
    holds every outage and the status in force at any moment inside it. Nothing after ``now``
    is read or counted (None: every window has ended)."""
    whole = (min(w[0] for w in windows), max(computed_part(w, now)[1] for w in windows))
    batches = [ports[i:i + BATCH_PORTS] for i in range(0, len(ports), BATCH_PORTS)]
    grace = timedelta(seconds=offline_grace_s)

    limit = reads if reads is not None else asyncio.Semaphore(READ_CONCURRENCY)

    async def load(batch: Sequence[FleetPort]) -> tuple[dict[PortKey, PortTimeline], dict[PortKey, list[Exclusion]]]:
        keys = [p.key for p in batch]
        async with limit:
            return (await port_timelines(db, keys, whole, offline_grace=grace),
                    await exclusions_for(db, keys, (whole[0], max(w[1] for w in windows))))

    out = []
    opening: dict[tuple[str, str, Interval], list[Interval]] = {}
    # Batches are read on a few connections at once (PostgreSQL uses both cores) while the
    # batches already read are computed here.
    tasks = [asyncio.create_task(load(batch), name="fleet-uptime-read") for batch in batches]
    try:
        for batch, task in zip(batches, tasks, strict=True):
            timelines, excl = await task
            for port in batch:
                per_window = []
                # Several windows (module 3's three): the port's outages once over the span, clipped to each.
                found = (outages_over(timelines[port.key], method, whole, offline_grace=grace,
                                      offline_counts=offline_counts) if len(windows) > 1 else None)
                for window in windows:
                    sig = (json.dumps(port.info.opening_hours, sort_keys=True), port.info.time_zone, window)
                    if sig not in opening:
                        opening[sig] = opening_intervals(port.info.opening_hours, port.info.time_zone, window)
                    applied = [e for e in excl.get(port.key, []) if e.start < window[1] and e.end > window[0]]
                    result = uptime(method=method, timeline=timelines[port.key], window=window,
                                    opening=opening[sig], exclusions=applied,
                                    operational_since=port.info.operational_since,
                                    operational_since_source=port.info.operational_since_source,
                                    offline_grace=grace, offline_counts=offline_counts, now=now,
                                    span_outages=found)
                    per_window.append((result, applied))
                out.append((port, per_window))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def aggregate(results: Sequence[UptimeResult]) -> dict[str, object]:
    """Uptime of a group of ports, recomputed from their minutes: over the ports with a figure
    (NEVI: eligible, complete period, state known throughout), and pro rata over the minutes
    each port has existed. Verdicts only for complete periods."""
    counted = [r for r in results if r.uptime_pct is not None]
    denominator = sum(r.denominator_minutes for r in counted)
    lost = sum(r.t_outage_min - r.t_excluded_min for r in counted)
    period = sum(r.minutes_in_period for r in results)
    live = sum(r.live_minutes for r in results)
    live_lost = sum(r.live_lost_minutes for r in results)
    complete = all(r.complete for r in results)
    not_counted: dict[str, int] = {}
    for r in results:
        for reason in r.uptime_null_reasons:
            not_counted[reason.code] = not_counted.get(reason.code, 0) + 1
    until = [r.computed_until for r in results if r.computed_until is not None]
    value = round2((denominator - lost) / denominator * 100) if denominator else None
    body: dict[str, object] = {
        "ports": len(results), "ports_counted": len(counted),
        "ports_not_counted_by_reason": not_counted,
        "complete": complete,
        "computed_until": max(until) if until else None,
        "ports_meeting_requirement": sum(1 for r in counted if r.meets_requirement) if complete else None,
        "denominator_minutes": round2(denominator), "t_outage_min": round2(sum(r.t_outage_min for r in counted)),
        "t_excluded_min": round2(sum(r.t_excluded_min for r in counted)),
        "uptime_pct": value,
        "pro_rata_uptime_pct": round2((live - live_lost) / live * 100) if live else None,
        "data_completeness": round(sum(r.data_completeness * r.minutes_in_period for r in results) / period, 4)
        if period else 0.0,
    }
    if results and results[0].method == "uk":
        # PCPR reg. 7(2): the network, on average, reliable for 99 % of each calendar year.
        body["meets_requirement"] = None if not complete or value is None else value >= 99.0
    return body
