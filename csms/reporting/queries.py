"""Reads what a port's reports need from TimescaleDB: its status history, its charge point's
connector-0 status and connectivity, its station's time zone and hours, and exclusions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from csms.reporting.intervals import Interval
from csms.reporting.uptime import Exclusion, PortTimeline, StatusChange


@dataclass(frozen=True, slots=True)
class PortInfo:
    charge_point_id: str
    evse_id: int
    time_zone: str
    opening_hours: dict[str, Any] | None
    operational_since: datetime | None


async def port_info(db: asyncpg.Pool, charge_point_id: str, evse_id: int) -> PortInfo | None:
    row = await db.fetchrow(
        """SELECT e.charge_point_id, e.evse_id, COALESCE(l.time_zone, 'UTC') AS time_zone,
                  l.opening_hours::text AS opening_hours,
                  COALESCE(e.operational_since, l.operational_since, e.created_at) AS operational_since
           FROM evses e JOIN charge_points c ON c.id = e.charge_point_id
           LEFT JOIN locations l ON l.id = c.location_id
           WHERE e.charge_point_id = $1 AND e.evse_id = $2""", charge_point_id, evse_id)
    if row is None:
        return None
    import json

    hours = json.loads(row["opening_hours"]) if row["opening_hours"] else None
    return PortInfo(row["charge_point_id"], row["evse_id"], row["time_zone"], hours, row["operational_since"])


async def _statuses(db: asyncpg.Pool, cp: str, evse: int, window: Interval) -> list[StatusChange]:
    rows = await db.fetch(
        """(SELECT time, status, error_code, received_at FROM connector_status
            WHERE charge_point_id = $1 AND evse_id = $2 AND time < $3 ORDER BY time DESC, received_at DESC LIMIT 1)
           UNION ALL
           (SELECT time, status, error_code, received_at FROM connector_status
            WHERE charge_point_id = $1 AND evse_id = $2 AND time >= $3 AND time < $4)
           ORDER BY time, received_at""", cp, evse, window[0], window[1])
    return [StatusChange(r["time"], r["status"], r["error_code"]) for r in rows]


async def port_timeline(db: asyncpg.Pool, charge_point_id: str, evse_id: int, window: Interval) -> PortTimeline:
    port = await _statuses(db, charge_point_id, evse_id, window)
    charger = await _statuses(db, charge_point_id, 0, window)
    rows = await db.fetch(
        """(SELECT time, event FROM connection_events WHERE charge_point_id = $1 AND event <> 'boot'
            AND time < $2 ORDER BY time DESC LIMIT 1)
           UNION ALL
           (SELECT time, event FROM connection_events WHERE charge_point_id = $1 AND event <> 'boot'
            AND time >= $2 AND time < $3)
           ORDER BY time""", charge_point_id, window[0], window[1])
    return PortTimeline(port_status=port, charger_status=charger,
                        connectivity=[(r["time"], r["event"]) for r in rows])


async def exclusions(db: asyncpg.Pool, charge_point_id: str, evse_id: int, window: Interval,
                     *, as_of: datetime | None = None) -> list[Exclusion]:
    """The exclusions in force: for each (start, end) the latest entry wins; 'withdrawn' cancels."""
    rows = await db.fetch(
        """SELECT DISTINCT ON (starts_at, ends_at) starts_at, ends_at, reason FROM outage_exclusions
           WHERE charge_point_id = $1 AND evse_id = $2 AND ends_at > $3 AND starts_at < $4
             AND ($5::timestamptz IS NULL OR created_at <= $5)
           ORDER BY starts_at, ends_at, id DESC""", charge_point_id, evse_id, window[0], window[1], as_of)
    return [Exclusion(r["starts_at"], r["ends_at"], r["reason"]) for r in rows if r["reason"] != "withdrawn"]
