"""What the OCPI Locations module reads: locations with their EVSEs and connectors, and the latest
status of every connector and charger (shaped into OCPI objects by ``csms.api.ocpi_objects``)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

StatusKey = tuple[str, int, int]

_LOCATIONS_SQL = """
SELECT l.id, l.name, l.address, l.city, l.postal_code, l.state, l.country, l.latitude, l.longitude,
       l.time_zone, l.is_public, l.opening_hours::text AS opening_hours, l.last_updated,
       cp.id AS cp_id, e.evse_id, e.uid, e.emi3_id, e.last_updated AS evse_updated,
       c.connector_id, c.standard, c.format, c.power_type, c.max_voltage_v, c.max_amperage_a, c.rated_power_w,
       c.last_updated AS connector_updated
FROM locations l
LEFT JOIN charge_points cp ON cp.location_id = l.id
LEFT JOIN evses e ON e.charge_point_id = cp.id
LEFT JOIN connectors c ON c.charge_point_id = e.charge_point_id AND c.evse_id = e.evse_id
WHERE l.latitude IS NOT NULL AND l.longitude IS NOT NULL
  AND (l.is_public OR NOT $1::boolean) AND ($2::text IS NULL OR l.id = $2)
ORDER BY l.id, cp.id, e.evse_id, c.connector_id
"""

# Latest status of every connector and of every charger as a whole (evse 0 / connector 0).
_STATUS_SQL = """
WITH keys AS (
    SELECT charge_point_id, evse_id, connector_id FROM connectors WHERE charge_point_id = ANY($1::text[])
    UNION ALL
    SELECT id, 0, 0 FROM charge_points WHERE id = ANY($1::text[])
)
SELECT k.charge_point_id, k.evse_id, k.connector_id, s.status, s.time
FROM keys k
CROSS JOIN LATERAL (
    SELECT status, time FROM connector_status s
    WHERE s.charge_point_id = k.charge_point_id AND s.evse_id = k.evse_id AND s.connector_id = k.connector_id
    ORDER BY s.time DESC, s.received_at DESC LIMIT 1
) s
"""



async def location_rows(pool: asyncpg.Pool, *, public_only: bool, location_id: str | None
                        ) -> tuple[list[list[asyncpg.Record]], dict[StatusKey, tuple[str, datetime]]]:
    """Rows per location (one per connector, ordered), and the latest status per (charger, evse, connector)."""
    rows = await pool.fetch(_LOCATIONS_SQL, public_only, location_id)
    cp_ids = sorted({r["cp_id"] for r in rows if r["cp_id"] is not None})
    statuses: dict[StatusKey, tuple[str, datetime]] = {}
    if cp_ids:
        for s in await pool.fetch(_STATUS_SQL, cp_ids):
            statuses[(s["charge_point_id"], s["evse_id"], s["connector_id"])] = (s["status"], s["time"])
    grouped: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    return list(grouped.values()), statuses
