"""What the operator API reads of the OCPP 2.1 data (migration 0011): settlements, DER events, periodic
event streams and their values, battery swaps, priority charging. Newest first, at most ``limit`` rows,
``before`` (exclusive) pages back in time."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

_JSON_COLUMNS = ("vat_company", "controls")


def _rows(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """Rows as dicts, jsonb decoded (the API's pool reads jsonb as text)."""
    out = []
    for r in rows:
        item = dict(r)
        for col in _JSON_COLUMNS:
            if isinstance(item.get(col), str):
                item[col] = json.loads(item[col])
        out.append(item)
    return out


async def settlements(db: asyncpg.Pool, charge_point_id: str, *, transaction_uid: str | None,
                      before: datetime | None, limit: int) -> list[dict[str, Any]]:
    """Settlements with the transaction they belong to (its start, stop and energy when it is stored)."""
    return _rows(await db.fetch(
        """SELECT s.transaction_uid, s.psp_ref, s.status, s.amount, s.settled_at, s.status_info, s.receipt_id,
                  s.receipt_url, s.vat_number, s.vat_company, s.received_at,
                  t.started_at AS transaction_started_at, t.stopped_at AS transaction_stopped_at,
                  t.energy_wh AS transaction_energy_wh
           FROM settlements s
           LEFT JOIN transactions t ON s.transaction_uid <> '' AND t.charge_point_id = s.charge_point_id
                                   AND t.transaction_uid = s.transaction_uid
           WHERE s.charge_point_id = $1 AND ($2::text IS NULL OR s.transaction_uid = $2)
             AND ($3::timestamptz IS NULL OR s.settled_at < $3)
           ORDER BY s.settled_at DESC, s.psp_ref LIMIT $4""",
        charge_point_id, transaction_uid, before, limit))


async def der_events(db: asyncpg.Pool, charge_point_id: str, *, kind: str | None, before: datetime | None,
                     limit: int) -> list[dict[str, Any]]:
    return _rows(await db.fetch(
        """SELECT time, kind, control_type, grid_event_fault, alarm_ended, extra_info, control_id, started,
                  superseded_ids, request_id, tbc, detail AS controls, received_at
           FROM der_events WHERE charge_point_id = $1 AND ($2::text IS NULL OR kind = $2)
             AND ($3::timestamptz IS NULL OR time < $3)
           ORDER BY time DESC, digest LIMIT $4""",
        charge_point_id, kind, before, limit))


async def periodic_streams(db: asyncpg.Pool, charge_point_id: str, *, open_only: bool,
                           limit: int) -> list[dict[str, Any]]:
    """Streams (newest opened first), each with how many values are stored and the latest one's time."""
    return _rows(await db.fetch(
        """SELECT s.stream_id, s.variable_monitoring_id, s.interval_s, s.max_values, s.opened_at, s.closed_at,
                  c.n AS stored_values, c.last_time AS last_value_at
           FROM periodic_streams s
           CROSS JOIN LATERAL (SELECT count(*) AS n, max(time) AS last_time FROM periodic_stream_samples v
                               WHERE v.charge_point_id = s.charge_point_id AND v.stream_id = s.stream_id) c
           WHERE s.charge_point_id = $1 AND (NOT $2 OR s.closed_at IS NULL)
           ORDER BY s.opened_at DESC NULLS LAST, s.stream_id LIMIT $3""",
        charge_point_id, open_only, limit))


async def stream_values(db: asyncpg.Pool, charge_point_id: str, stream_id: int, *, before: datetime | None,
                        limit: int) -> list[dict[str, Any]]:
    return _rows(await db.fetch(
        """SELECT time, value, raw_value, basetime, seq, pending, received_at FROM periodic_stream_samples
           WHERE charge_point_id = $1 AND stream_id = $2 AND ($3::timestamptz IS NULL OR time < $3)
           ORDER BY time DESC, basetime DESC, seq DESC LIMIT $4""",
        charge_point_id, stream_id, before, limit))


async def battery_swaps(db: asyncpg.Pool, charge_point_id: str, *, before: datetime | None,
                        limit: int) -> list[dict[str, Any]]:
    """One row per battery swapped in or out (the message carries no time: when the CSMS received it)."""
    return _rows(await db.fetch(
        """SELECT received_at, request_id, event_type, id_token, id_token_type, evse_id, serial_number, soc, soh,
                  production_date, vendor_info
           FROM battery_swaps WHERE charge_point_id = $1 AND ($2::timestamptz IS NULL OR received_at < $2)
           ORDER BY received_at DESC, evse_id, serial_number LIMIT $3""",
        charge_point_id, before, limit))


async def priority_charging(db: asyncpg.Pool, charge_point_id: str, *, before: datetime | None,
                            limit: int) -> list[dict[str, Any]]:
    return _rows(await db.fetch(
        """SELECT received_at, transaction_uid, activated FROM priority_charging
           WHERE charge_point_id = $1 AND ($2::timestamptz IS NULL OR received_at < $2)
           ORDER BY received_at DESC, transaction_uid LIMIT $3""",
        charge_point_id, before, limit))
