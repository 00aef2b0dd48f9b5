"""Idempotent writes of the OCPP 2.1 events (migration 0011), inside the batch's transaction.

Every insert is ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` on the table's natural key
(rows sorted by that key, so concurrent writers lock in the same order), so a redelivered batch or a retried
message is stored once and the duplicates are counted. Stream values go the meter samples' way (COPY into a
staging table, ``ingest.writer._copy_dedup``), because a stream can be frequent. Streams opened and closed are
merged order-independently: a Close before its Open still ends as one closed stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.events import (
    BatterySwapEvent,
    DerEvent,
    PeriodicStreamEvent,
    PriorityChargingEvent,
    SettlementEvent,
    StreamDataEvent,
)

Conn = asyncpg.Connection | PoolConnectionProxy
Ocpp21Event = (SettlementEvent | DerEvent | PeriodicStreamEvent | StreamDataEvent | BatterySwapEvent
               | PriorityChargingEvent)
OCPP21_EVENTS = (SettlementEvent, DerEvent, PeriodicStreamEvent, StreamDataEvent, BatterySwapEvent,
                 PriorityChargingEvent)

STREAM_SAMPLE_COLUMNS = ("time", "charge_point_id", "stream_id", "basetime", "seq", "value", "raw_value", "pending",
                         "received_at")
STREAM_SAMPLE_ORDER = "charge_point_id, stream_id, basetime, seq, time"
STREAM_SAMPLE_KEY = (1, 2, 3, 4, 0)

_SETTLEMENTS = """
INSERT INTO settlements (charge_point_id, transaction_uid, psp_ref, status, amount, settled_at, status_info,
                         receipt_id, receipt_url, vat_number, vat_company, digest, received_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::jsonb[], $12::text[], $13::timestamptz[])
ON CONFLICT DO NOTHING
"""

_DER = """
INSERT INTO der_events (time, charge_point_id, kind, control_type, grid_event_fault, alarm_ended, extra_info,
                        control_id, started, superseded_ids, request_id, tbc, detail, digest, received_at)
SELECT t, cp, k, ct, gf, ae, ei, ci, st, string_to_array(si, E'\\x1f'), ri, tb, de, dg, ra
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::text[], $8::text[],
            $9::bool[], $10::text[], $11::int[], $12::bool[], $13::jsonb[], $14::text[], $15::timestamptz[])
     AS v(t, cp, k, ct, gf, ae, ei, ci, st, si, ri, tb, de, dg, ra)
ON CONFLICT DO NOTHING
"""

_SWAPS = """
INSERT INTO battery_swaps (charge_point_id, request_id, event_type, id_token, id_token_type, evse_id, serial_number,
                           soc, soh, production_date, vendor_info, digest, received_at)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
                     $8::float8[], $9::float8[], $10::timestamptz[], $11::text[], $12::text[], $13::timestamptz[])
ON CONFLICT DO NOTHING
"""

_PRIORITY = """
INSERT INTO priority_charging (charge_point_id, transaction_uid, activated, message_id, received_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::timestamptz[])
ON CONFLICT DO NOTHING
"""

# Open: a retried Open keeps the first opened_at; an Open after the stream was closed reopens it (a new
# stream with the same id, N11). Close: the earliest close after the open wins.
_STREAM_OPEN = """
INSERT INTO periodic_streams AS s (charge_point_id, stream_id, variable_monitoring_id, interval_s, max_values,
                                   opened_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (charge_point_id, stream_id) DO UPDATE SET
    variable_monitoring_id = EXCLUDED.variable_monitoring_id, interval_s = EXCLUDED.interval_s,
    max_values = EXCLUDED.max_values,
    opened_at  = CASE WHEN s.closed_at IS NOT NULL AND s.closed_at < EXCLUDED.opened_at THEN EXCLUDED.opened_at
                      ELSE LEAST(s.opened_at, EXCLUDED.opened_at) END,
    closed_at  = CASE WHEN s.closed_at IS NOT NULL AND s.closed_at < EXCLUDED.opened_at THEN NULL
                      ELSE s.closed_at END,
    updated_at = now()
"""

_STREAM_CLOSE = """
INSERT INTO periodic_streams AS s (charge_point_id, stream_id, closed_at) VALUES ($1, $2, $3)
ON CONFLICT (charge_point_id, stream_id) DO UPDATE SET
    closed_at  = CASE WHEN s.opened_at IS NOT NULL AND s.opened_at > EXCLUDED.closed_at THEN s.closed_at
                      ELSE LEAST(COALESCE(s.closed_at, EXCLUDED.closed_at), EXCLUDED.closed_at) END,
    updated_at = now()
"""

CopyDedup = Callable[[Conn, str, list[tuple[Any, ...]]], Awaitable[int]]


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])


async def _insert(conn: Conn, sql: str, table: str, rows: list[tuple[Any, ...]], key: Callable[[tuple[Any, ...]], Any],
                  inserted: dict[str, int], duplicates: dict[str, int]) -> None:
    if not rows:
        return
    rows.sort(key=key)
    columns = [list(col) for col in zip(*rows, strict=True)]
    n = _count(await conn.execute(sql, *columns))
    inserted[table] = inserted.get(table, 0) + n
    duplicates[table] = duplicates.get(table, 0) + len(rows) - n


async def write_ocpp21(conn: Conn, events: Sequence[Ocpp21Event], copy_dedup: CopyDedup,
                       inserted: dict[str, int], duplicates: dict[str, int]) -> None:
    settlements: list[tuple[Any, ...]] = []
    der: list[tuple[Any, ...]] = []
    swaps: list[tuple[Any, ...]] = []
    priority: list[tuple[Any, ...]] = []
    samples: list[tuple[Any, ...]] = []
    streams: list[PeriodicStreamEvent] = []
    for ev in events:
        cp = ev.charge_point_id
        if isinstance(ev, SettlementEvent):
            settlements.append((cp, ev.transaction_uid, ev.psp_ref, ev.status, ev.amount, ev.time, ev.status_info,
                                ev.receipt_id, ev.receipt_url, ev.vat_number, ev.vat_company, ev.digest,
                                ev.received_at))
        elif isinstance(ev, DerEvent):
            der.append((ev.time, cp, ev.kind, ev.control_type, ev.grid_event_fault, ev.alarm_ended, ev.extra_info,
                        ev.control_id, ev.started, "\x1f".join(ev.superseded_ids), ev.request_id, ev.tbc,
                        ev.detail, ev.digest, ev.received_at))
        elif isinstance(ev, BatterySwapEvent):
            for b in ev.batteries:
                swaps.append((cp, ev.request_id, ev.event_type, ev.id_token, ev.id_token_type, b.evse_id,
                               b.serial_number, b.soc, b.soh, b.production_date, b.vendor_info, ev.digest,
                               ev.received_at))
        elif isinstance(ev, PriorityChargingEvent):
            priority.append((cp, ev.transaction_uid, ev.activated, ev.message_id, ev.received_at))
        elif isinstance(ev, StreamDataEvent):
            for v in ev.values:
                samples.append((v.time, cp, ev.stream_id, ev.basetime, v.seq, v.value, v.raw_value, ev.pending,
                                ev.received_at))
        else:
            streams.append(ev)
    await _insert(conn, _SETTLEMENTS, "settlements", settlements, lambda r: (r[0], r[2], r[11]), inserted,
                  duplicates)
    await _insert(conn, _DER, "der_events", der, lambda r: (r[1], r[2], r[13]), inserted, duplicates)
    await _insert(conn, _SWAPS, "battery_swaps", swaps, lambda r: (r[0], r[11], r[5], r[6]), inserted, duplicates)
    await _insert(conn, _PRIORITY, "priority_charging", priority, lambda r: (r[0], r[1], r[2], r[3]), inserted,
                  duplicates)
    if samples:
        n = await copy_dedup(conn, "periodic_stream_samples", samples)
        inserted["periodic_stream_samples"] = inserted.get("periodic_stream_samples", 0) + n
        duplicates["periodic_stream_samples"] = duplicates.get("periodic_stream_samples", 0) + len(samples) - n
    # Key order (then time), so that concurrent writers lock stream rows in the same order.
    for st in sorted(streams, key=lambda e: (e.charge_point_id, e.stream_id, e.time)):
        if st.kind == "open":
            await conn.execute(_STREAM_OPEN, st.charge_point_id, st.stream_id, st.variable_monitoring_id,
                               st.interval_s, st.values, st.time)
        else:
            await conn.execute(_STREAM_CLOSE, st.charge_point_id, st.stream_id, st.time)
    if streams:
        inserted["periodic_streams"] = inserted.get("periodic_streams", 0) + len(streams)
