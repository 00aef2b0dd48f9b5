"""What the operator API shows of chargers: the registered ones, their latest statuses, sessions."""

from __future__ import annotations

from typing import Any

import asyncpg


async def list_charge_points(db: asyncpg.Pool, *, limit: int = 10000) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, location_id, vendor, model, serial_number, firmware_version, ocpp_version, admission, "
        "registration_status, last_boot_at, last_seen_at FROM charge_points ORDER BY id LIMIT $1", limit)
    return [dict(r) for r in rows]


async def charge_point_exists(db: asyncpg.Pool, charge_point_id: str) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM charge_points WHERE id = $1", charge_point_id))


async def latest_statuses(db: asyncpg.Pool, charge_point_id: str) -> list[dict[str, Any]]:
    """The latest status of every connector of the charger (connector 0: the charger as a whole)."""
    rows = await db.fetch(
        "SELECT DISTINCT ON (evse_id, connector_id) evse_id, connector_id, status, error_code, time "
        "FROM connector_status WHERE charge_point_id = $1 ORDER BY evse_id, connector_id, time DESC",
        charge_point_id)
    return [dict(r) for r in rows]


async def open_transactions(db: asyncpg.Pool, charge_point_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT transaction_uid, evse_id, connector_id, id_token, started_at, meter_start_wh, charging_state "
        "FROM transactions WHERE charge_point_id = $1 AND stopped_at IS NULL ORDER BY started_at",
        charge_point_id)
    return [dict(r) for r in rows]


async def recent_transactions(db: asyncpg.Pool, *, charge_point_id: str | None, open_only: bool,
                              limit: int) -> list[dict[str, Any]]:
    """Sessions, newest first."""
    rows = await db.fetch(
        "SELECT charge_point_id, transaction_uid, evse_id, connector_id, id_token, started_at, stopped_at, "
        "meter_start_wh, meter_stop_wh, energy_wh, stop_reason, offline, quality_flags FROM transactions "
        "WHERE ($1::text IS NULL OR charge_point_id = $1) AND (NOT $2 OR stopped_at IS NULL) "
        "ORDER BY COALESCE(started_at, stopped_at) DESC NULLS LAST LIMIT $3",
        charge_point_id, open_only, limit)
    return [dict(r) for r in rows]
