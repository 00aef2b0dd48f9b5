"""Reads for the uptime reports of many ports: the registered ports with their station, zone, hours
and rated power; the exclusions in force (and their append-only log); each port's uptime over one
or more windows, read in batches (a few queries for any number of ports) while the batches already
read are computed (``csms.reporting.fleet``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from csms.reporting.fleet import FleetPort, OpeningCache, PortInfo, PortKey, computed_part, port_uptime_windows
from csms.reporting.outages import PortTimeline
from csms.reporting.uptime import Exclusion, UptimeResult
from csms.store.report_uptime import port_timelines
from schemas.intervals import Interval

BATCH_PORTS = 250
READ_CONCURRENCY = 2   # database connections reading batches at once

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
    opening: OpeningCache = {}
    # Batches are read on a few connections at once (PostgreSQL uses both cores) while the
    # batches already read are computed here.
    tasks = [asyncio.create_task(load(batch), name="fleet-uptime-read") for batch in batches]
    try:
        for batch, task in zip(batches, tasks, strict=True):
            timelines, excl = await task
            for port in batch:
                out.append((port, port_uptime_windows(port, timelines[port.key], excl.get(port.key, []), method,
                                                      windows, whole, now=now, offline_grace=grace,
                                                      offline_counts=offline_counts, opening=opening)))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


async def add_exclusion(db: asyncpg.Pool, charge_point_id: str, evse_id: int, starts_at: datetime, ends_at: datetime,
                        reason: str, notes: str, evidence_urls: list[str], claimed_by: str) -> asyncpg.Record:
    """Append an exclusion to the log (a later entry for the same span wins); its id and created_at."""
    row = await db.fetchrow(
        """INSERT INTO outage_exclusions (charge_point_id, evse_id, starts_at, ends_at, reason, notes,
                                          evidence_urls, claimed_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at""",
        charge_point_id, evse_id, starts_at, ends_at, reason, notes, evidence_urls, claimed_by)
    assert row is not None
    return row


async def exclusion_log(db: asyncpg.Pool, charge_point_id: str, evse_id: int) -> list[dict[str, Any]]:
    """The whole audit trail of exclusions for the port, oldest first."""
    rows = await db.fetch(
        "SELECT id, starts_at, ends_at, reason, notes, evidence_urls, claimed_by, created_at "
        "FROM outage_exclusions WHERE charge_point_id = $1 AND evse_id = $2 ORDER BY id LIMIT 10000",
        charge_point_id, evse_id)
    return [dict(r) for r in rows]


async def location_time_zone(db: asyncpg.Pool, location_id: str) -> str | None:
    """A location's IANA time zone (None: no such location)."""
    zone: str | None = await db.fetchval("SELECT time_zone FROM locations WHERE id = $1", location_id)
    return zone
