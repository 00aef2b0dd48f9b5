"""Reads what ports' uptime needs from TimescaleDB: the status rows outages depend on, their
charge points' connector-0 statuses and connectivity. Port details and exclusions:
``csms.reporting.fleet``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from csms.reporting.uptime import PortTimeline, StatusChange
from schemas.intervals import Interval


@dataclass(frozen=True, slots=True)
class PortInfo:
    charge_point_id: str
    evse_id: int
    time_zone: str
    opening_hours: dict[str, Any] | None
    operational_since: datetime | None


# Only what outages depend on (so the cost follows the number of faults, not of status
# changes): the status in force at the window's start, the first row inside it (where
# knowledge starts), every Faulted/Unavailable row and the row that ended each.
_SPARSE_STATUS_SQL = """
WITH p AS MATERIALIZED (SELECT * FROM unnest($1::text[], $2::int[]) AS p(cp, evse)),
-- every outage row in the window: one scan of each chunk's partial index, not one per port
down AS MATERIALIZED (
    SELECT x.charge_point_id, x.evse_id, x.time, x.status, x.error_code, x.received_at
    FROM connector_status x JOIN p ON x.charge_point_id = p.cp AND x.evse_id = p.evse
    WHERE x.status IN ('Faulted', 'Unavailable') AND x.time >= $3 AND x.time < $4),
edges AS MATERIALIZED (
    SELECT x.charge_point_id, x.evse_id, x.time, x.status, x.error_code, x.received_at FROM p
    CROSS JOIN LATERAL (
        (SELECT * FROM connector_status x WHERE x.charge_point_id = p.cp AND x.evse_id = p.evse AND x.time < $3
         ORDER BY x.time DESC, x.received_at DESC LIMIT 1)
        UNION ALL
        (SELECT * FROM connector_status x WHERE x.charge_point_id = p.cp AND x.evse_id = p.evse
         AND x.time >= $3 AND x.time < $4 ORDER BY x.time, x.received_at LIMIT 1)) x),
d AS (SELECT * FROM down UNION ALL SELECT * FROM edges)
SELECT d.charge_point_id AS cp, d.evse_id AS evse, d.time, d.status, d.error_code, d.received_at FROM d
UNION
SELECT d.charge_point_id, d.evse_id, n.time, n.status, n.error_code, n.received_at FROM d
CROSS JOIN LATERAL (
    SELECT n.time, n.status, n.error_code, n.received_at FROM connector_status n
    WHERE n.charge_point_id = d.charge_point_id AND n.evse_id = d.evse_id AND n.time >= d.time AND n.time < $4
      AND (n.time, n.received_at) > (d.time, d.received_at)
    ORDER BY n.time, n.received_at LIMIT 1) n
WHERE d.status IN ('Faulted', 'Unavailable')
"""

_CONNECTIVITY_SQL = """
WITH p AS (SELECT DISTINCT unnest($1::text[]) AS cp)
SELECT p.cp, c.time, c.event FROM p CROSS JOIN LATERAL (
    (SELECT time, event FROM connection_events x WHERE x.charge_point_id = p.cp AND x.event <> 'boot'
     AND x.time < $2 ORDER BY x.time DESC LIMIT 1)
    UNION ALL
    (SELECT time, event FROM connection_events x WHERE x.charge_point_id = p.cp AND x.event <> 'boot'
     AND x.time >= $2 AND x.time < $3)) c
ORDER BY p.cp, c.time
"""


async def port_timelines(db: asyncpg.Pool, ports: Sequence[tuple[str, int]],
                         window: Interval) -> dict[tuple[str, int], PortTimeline]:
    """What the uptime of each port over ``window`` depends on, for many ports in two queries."""
    cps = sorted({cp for cp, _ in ports})
    keys = sorted({*ports, *((cp, 0) for cp in cps)})
    rows = await db.fetch(_SPARSE_STATUS_SQL, [k[0] for k in keys], [k[1] for k in keys], window[0], window[1])
    statuses: dict[tuple[str, int], list[tuple[datetime, datetime, StatusChange]]] = {}
    for r in rows:
        statuses.setdefault((r["cp"], r["evse"]), []).append(
            (r["time"], r["received_at"], StatusChange(r["time"], r["status"], r["error_code"])))
    connectivity: dict[str, list[tuple[datetime, str]]] = {}
    for r in await db.fetch(_CONNECTIVITY_SQL, cps, window[0], window[1]):
        connectivity.setdefault(r["cp"], []).append((r["time"], r["event"]))

    def ordered(key: tuple[str, int]) -> list[StatusChange]:
        return [change for _, _, change in sorted(statuses.get(key, []), key=lambda t: (t[0], t[1]))]

    return {(cp, evse): PortTimeline(port_status=ordered((cp, evse)), charger_status=ordered((cp, 0)),
                                     connectivity=connectivity.get(cp, [])) for cp, evse in ports}
