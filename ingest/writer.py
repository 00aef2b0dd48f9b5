"""Idempotent batch writes to TimescaleDB.

Each batch is one transaction. A small batch of samples and status changes is one statement
(ingest/writer_small.py). Otherwise time-series rows go by binary COPY straight into the table;
if any row is stored already, the batch goes again by COPY into per-connection temporary
staging tables, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on the natural keys. So
redelivered or retried data never doubles (and the number of rows that were absorbed as
duplicates is known). Transactions are merged with
order-independent upserts, so a Stop before its Start still ends as one session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ingest.writer_ocpp21 import (
    OCPP21_EVENTS,
    STREAM_SAMPLE_COLUMNS,
    STREAM_SAMPLE_KEY,
    STREAM_SAMPLE_ORDER,
    CopyDedup,
    Ocpp21Event,
    write_ocpp21,
)
from ingest.writer_small import MARKS_UPSERT, SEEN_UPDATE, SINGLE_STATEMENT_MAX_ROWS, write_single_statement
from schemas.events import ConnectionEvent, Event, LogEvent, MeterEvent, StatusEvent, TransactionEvent
from schemas.port_state import ROLLED_MEASURANDS

logger = logging.getLogger(__name__)

_METER_COLUMNS = ("time", "charge_point_id", "evse_id", "connector_id", "transaction_uid", "measurand", "phase",
                  "location", "context", "value", "unit", "raw_value", "raw_unit", "quality_flags", "received_at",
                  "raw_timestamp")
_STATUS_COLUMNS = ("time", "charge_point_id", "evse_id", "connector_id", "status", "error_code", "vendor_id",
                   "vendor_error_code", "info", "received_at", "quality_flags", "raw_timestamp")
_CONN_COLUMNS = ("time", "charge_point_id", "event", "reason", "node_id", "ocpp_version", "detail",
                 "connection_epoch")
_LOG_COLUMNS = ("time", "charge_point_id", "action", "payload", "digest", "received_at")

_NATURAL_ORDER = {
    "meter_samples": "charge_point_id, evse_id, connector_id, transaction_uid, measurand, phase, location, context, "
                     "time",
    "connector_status": "charge_point_id, evse_id, connector_id, status, error_code, time",
    "connection_events": "charge_point_id, event, node_id, time",
    "charger_messages": "charge_point_id, action, digest, time",
    "periodic_stream_samples": STREAM_SAMPLE_ORDER,   # OCPP 2.1 stream data (ingest/writer_ocpp21.py)
}

# Positions of the natural-key columns in each table's row tuple, in the unique index's order.
_KEY_POSITIONS = {
    "meter_samples": (1, 2, 3, 4, 5, 6, 7, 8, 0),
    "connector_status": (1, 2, 3, 4, 5, 0),
    "connection_events": (1, 2, 4, 0),
    "charger_messages": (1, 2, 4, 0),
    "periodic_stream_samples": STREAM_SAMPLE_KEY,
}

_STAGING = {
    "meter_samples": ("stage_meter_samples", _METER_COLUMNS),
    "connector_status": ("stage_connector_status", _STATUS_COLUMNS),
    "connection_events": ("stage_connection_events", _CONN_COLUMNS),
    "charger_messages": ("stage_charger_messages", _LOG_COLUMNS),
    "periodic_stream_samples": ("stage_periodic_stream_samples", STREAM_SAMPLE_COLUMNS),
}

_TX_UPSERT = """
INSERT INTO transactions AS t (
    charge_point_id, transaction_uid, ocpp16_transaction_id, evse_id, connector_id, id_token,
    started_at, meter_start_wh, stopped_at, meter_stop_wh, stop_reason, stop_id_token,
    charging_state, remote_start_id, last_seq_no, offline, quality_flags)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT (charge_point_id, transaction_uid) DO UPDATE SET
    ocpp16_transaction_id = COALESCE(t.ocpp16_transaction_id, EXCLUDED.ocpp16_transaction_id),
    evse_id        = COALESCE(t.evse_id, EXCLUDED.evse_id),
    connector_id   = COALESCE(t.connector_id, EXCLUDED.connector_id),
    id_token       = COALESCE(t.id_token, EXCLUDED.id_token),
    -- the session starts at its earliest event, whichever arrives first
    started_at     = LEAST(t.started_at, EXCLUDED.started_at),
    meter_start_wh = COALESCE(t.meter_start_wh, EXCLUDED.meter_start_wh),
    stopped_at     = COALESCE(t.stopped_at, EXCLUDED.stopped_at),
    meter_stop_wh  = COALESCE(t.meter_stop_wh, EXCLUDED.meter_stop_wh),
    stop_reason    = COALESCE(t.stop_reason, EXCLUDED.stop_reason),
    stop_id_token  = COALESCE(t.stop_id_token, EXCLUDED.stop_id_token),
    -- latest-wins fields follow the sequence number, not arrival order
    charging_state = CASE WHEN EXCLUDED.last_seq_no IS NULL OR t.last_seq_no IS NULL
                               OR EXCLUDED.last_seq_no >= t.last_seq_no
                          THEN COALESCE(EXCLUDED.charging_state, t.charging_state)
                          ELSE COALESCE(t.charging_state, EXCLUDED.charging_state) END,
    remote_start_id = COALESCE(t.remote_start_id, EXCLUDED.remote_start_id),
    last_seq_no    = GREATEST(t.last_seq_no, EXCLUDED.last_seq_no),
    offline        = t.offline OR EXCLUDED.offline,
    quality_flags  = t.quality_flags | EXCLUDED.quality_flags,
    updated_at     = now()
"""

_TX_EVENT_INSERT = """
INSERT INTO transaction_events (charge_point_id, transaction_uid, seq_no, event_type, time, trigger_reason,
                                offline, received_at, charging_state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
"""

_BOOT_UPDATE = """
UPDATE charge_points SET
    vendor = COALESCE($2, vendor), model = COALESCE($3, model),
    serial_number = COALESCE($4, serial_number), firmware_version = COALESCE($5, firmware_version),
    ocpp_version = COALESCE(NULLIF($6, ''), ocpp_version),
    last_boot_at = GREATEST(last_boot_at, $7), updated_at = now()
WHERE id = $1
"""

@dataclass(slots=True)
class WriteResult:
    """What one batch did: rows inserted per table, and rows absorbed as duplicates."""

    inserted: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)


async def init_connection(conn: asyncpg.Connection | PoolConnectionProxy) -> None:
    """Pool ``init`` hook: staging tables live as long as the connection."""
    for table, (stage, _) in _STAGING.items():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
    # Binary jsonb (what COPY ... BINARY needs) is a version byte 1 followed by the JSON text.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog",
                              format="binary")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool ``reset`` hook: nothing to undo on release, so no round trip per batch (issue 15).

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` at
    every release, one more round trip per batch. This pool's users (the writer, the roll-up,
    maintenance) set no session variables, keep no cursors and listen to nothing, and the
    roll-up releases its advisory lock itself or closes the connection (ingest/rollup.py).
    asyncpg still rolls back an open transaction before this hook runs.
    """


def _jsonb_encode(value: object) -> bytes:
    return b"\x01" + json.dumps(value, separators=(",", ":")).encode()


def _jsonb_decode(data: bytes) -> object:
    return json.loads(data[1:])


class TimescaleWriter:
    """Commit event batches idempotently; safe to call concurrently (one connection per batch).

    ``single_statement_max_rows``: a batch of only samples and status changes with at most this
    many rows goes as one statement, a larger one by COPY (ingest/writer_small.py says what each
    costs the client and the server, and why the two deployments choose differently).
    """

    def __init__(self, *, pool: asyncpg.Pool, single_statement_max_rows: int = SINGLE_STATEMENT_MAX_ROWS) -> None:
        self._pool = pool
        self._single_statement_max_rows = single_statement_max_rows

    @classmethod
    async def connect(cls, *, database_url: str, min_size: int = 1, max_size: int = 4,
                      connect_timeout_s: float = 10.0,
                      single_statement_max_rows: int = SINGLE_STATEMENT_MAX_ROWS) -> TimescaleWriter:
        pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size,
                                         init=init_connection, reset=keep_session, timeout=connect_timeout_s)
        return cls(pool=pool, single_statement_max_rows=single_statement_max_rows)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def write_batch(self, events: Sequence[Event]) -> WriteResult:
        rows = _split(events)
        async with self._pool.acquire() as conn:
            if rows.single_statement(self._single_statement_max_rows):
                return await _write_single_statement(conn, rows)
            try:
                result = await _write_rows(conn, rows, _copy_new)
            except asyncpg.UniqueViolationError:
                # Some row is stored already (a resend, a replayed message, a second worker): the
                # whole batch again, de-duplicated. The normal case saves a savepoint per table.
                result = await _write_rows(conn, rows, _copy_dedup)
            if rows.seen:
                # Outside the batch's transaction, in id order: bookkeeping that must not make
                # two writers wait on each other's charge_points rows. The same connection: no
                # second pool acquire and reset per batch (issue 15).
                ids = sorted(rows.seen)
                await conn.execute(SEEN_UPDATE, ids, [rows.seen[i] for i in ids])
        return result


@dataclass(slots=True)
class _Rows:
    """A batch's events as table rows, before they are written."""

    meter: list[MeterEvent] = field(default_factory=list)
    samples: int = 0
    status: list[tuple[Any, ...]] = field(default_factory=list)
    conns: list[tuple[Any, ...]] = field(default_factory=list)
    logs: list[tuple[Any, ...]] = field(default_factory=list)
    boots: list[ConnectionEvent] = field(default_factory=list)
    txs: list[TransactionEvent] = field(default_factory=list)
    ocpp21: list[Ocpp21Event] = field(default_factory=list)
    seen: dict[str, datetime] = field(default_factory=dict)
    dirty: dict[tuple[str, int], datetime] = field(default_factory=dict)
    _meter_rows: list[tuple[Any, ...]] | None = None

    def single_statement(self, max_rows: int) -> bool:
        """Only samples and status changes (the steady traffic), few enough: one statement writes them."""
        return (not (self.conns or self.logs or self.boots or self.txs or self.ocpp21)
                and self.samples + len(self.status) <= max_rows)

    def meter_rows(self) -> list[tuple[Any, ...]]:
        """The samples as meter_samples rows (_METER_COLUMNS), for COPY.

        ``value + 0.0``: a reading of -0 is stored as 0, as the single statement stores it (its
        JSON numbers become jsonb numerics, which have no negative zero). Built once: a batch that
        meets a stored row is written a second time, de-duplicated."""
        if self._meter_rows is None:
            self._meter_rows = [(s.time, ev.charge_point_id, ev.evse_id, ev.connector_id, ev.transaction_uid,
                                 s.measurand, s.phase, s.location, s.context, s.value + 0.0, s.unit, s.raw_value,
                                 s.raw_unit, s.flags, ev.received_at, s.raw_time)
                                for ev in self.meter for s in ev.samples]
        return self._meter_rows


def _split(events: Sequence[Event]) -> _Rows:
    b = _Rows()
    meter, status, conns, logs, boots, txs, ocpp21 = b.meter, b.status, b.conns, b.logs, b.boots, b.txs, b.ocpp21
    seen, dirty = b.seen, b.dirty
    for ev in events:
        prev = seen.get(ev.charge_point_id)
        if prev is None or ev.received_at > prev:
            seen[ev.charge_point_id] = ev.received_at
        if isinstance(ev, MeterEvent):
            meter.append(ev)
            b.samples += len(ev.samples)
            # Energy per quarter hour (roll-up, migration 0005) depends on a session's register samples,
            # its peak power and SoC (migration 0008 session_summary) on its power and SoC samples.
            registers = [s.time for s in ev.samples if s.measurand in ROLLED_MEASURANDS]
            if ev.transaction_uid and registers:
                _mark(dirty, ev.charge_point_id, ev.evse_id, min(registers))
        elif isinstance(ev, StatusEvent):
            status.append((ev.time, ev.charge_point_id, ev.evse_id, ev.connector_id, ev.status,
                           ev.error_code, ev.vendor_id, ev.vendor_error_code, ev.info, ev.received_at,
                           ev.flags, ev.raw_time))
            _mark(dirty, ev.charge_point_id, ev.evse_id, ev.time)
        elif isinstance(ev, ConnectionEvent):
            conns.append((ev.time, ev.charge_point_id, ev.event, ev.reason, ev.node_id, ev.ocpp_version,
                          ev.detail, ev.connection_epoch))
            if ev.event == "boot":
                boots.append(ev)
        elif isinstance(ev, LogEvent):
            logs.append((ev.time, ev.charge_point_id, ev.action, ev.payload, ev.digest, ev.received_at))
        elif isinstance(ev, OCPP21_EVENTS):
            ocpp21.append(ev)
        else:
            txs.append(ev)
            # Sessions per day, and 2.0.1 chargingState spans; the EVSE is often not repeated.
            _mark(dirty, ev.charge_point_id, 0, ev.time)
    return b


async def _write_rows(conn: PoolConnectionProxy, b: _Rows, copy: CopyDedup) -> WriteResult:
    """The batch's rows in one transaction; ``copy`` inserts the rows of one table."""
    result = WriteResult()
    async with conn.transaction():
        for table, rows in (("meter_samples", b.meter_rows()), ("connector_status", b.status),
                            ("connection_events", b.conns), ("charger_messages", b.logs)):
            if rows:
                inserted = await copy(conn, table, rows)
                result.inserted[table] = inserted
                result.duplicates[table] = len(rows) - inserted
        if b.txs:
            await _write_transactions(conn, b.txs, result)
        if b.ocpp21:
            await write_ocpp21(conn, b.ocpp21, copy, result.inserted, result.duplicates)
        for boot in b.boots:
            d = boot.detail or {}
            await conn.execute(_BOOT_UPDATE, boot.charge_point_id, d.get("vendor"), d.get("model"),
                               d.get("serial_number"), d.get("firmware_version"), boot.ocpp_version,
                               boot.time)
        if b.dirty:
            keys = sorted(b.dirty)  # key order: concurrent batches lock marks in the same order
            await conn.execute(MARKS_UPSERT, [k[0] for k in keys], [k[1] for k in keys],
                               [b.dirty[k] for k in keys])
    return result


async def _write_single_statement(conn: PoolConnectionProxy, b: _Rows) -> WriteResult:
    keys = sorted(b.dirty)  # key order: concurrent batches lock marks in the same order
    ids = sorted(b.seen)
    counts = await write_single_statement(
        conn, b.meter, _unique("connector_status", b.status), [k[0] for k in keys],
        [k[1] for k in keys], [b.dirty[k] for k in keys], ids, [b.seen[i] for i in ids])
    result = WriteResult()
    for table, rows, inserted in (("meter_samples", b.samples, counts[0]),
                                  ("connector_status", len(b.status), counts[1])):
        if rows:
            result.inserted[table] = inserted
            result.duplicates[table] = rows - inserted
    return result


def _mark(dirty: dict[tuple[str, int], datetime], charge_point_id: str, evse_id: int, moment: datetime) -> None:
    key = (charge_point_id, evse_id)
    prev = dirty.get(key)
    if prev is None or moment < prev:
        dirty[key] = moment


def _unique(table: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows in natural-key order, each key once.

    Natural-key order: concurrent writers of overlapping batches (two workers, a resend)
    then take index locks in the same order, so they wait for each other, never deadlock.
    """
    key = itemgetter(*_KEY_POSITIONS[table])
    # Each key computed once (the sort-then-compare-neighbours form computed it three times a row:
    # 0.75 against 0.42 us a sample row, issue 15 note); of a repeated key the first row is kept.
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        first.setdefault(key(row), row)
    return [first[k] for k in sorted(first)]


async def _copy_new(conn: asyncpg.Connection | PoolConnectionProxy, table: str, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows none of which is stored yet (the normal case): one COPY straight into the table.

    A row stored already raises ``UniqueViolationError``, which aborts the batch's transaction;
    ``TimescaleWriter.write_batch`` then writes the whole batch again with ``_copy_dedup``.
    """
    unique = _unique(table, rows)
    await conn.copy_records_to_table(table, records=unique, columns=list(_STAGING[table][1]))
    return len(unique)


async def _copy_dedup(conn: asyncpg.Connection | PoolConnectionProxy, table: str, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows that are not stored yet, through the staging table; return how many were inserted."""
    stage, columns = _STAGING[table]
    unique = _unique(table, rows)
    await conn.copy_records_to_table(stage, records=unique, columns=list(columns))
    cols = ", ".join(columns)
    order = _NATURAL_ORDER[table]
    status = await conn.execute(
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ORDER BY {order} ON CONFLICT DO NOTHING")
    await conn.execute(f"TRUNCATE {stage}")
    return int(status.rsplit(" ", 1)[1])


async def _write_transactions(conn: asyncpg.Connection | PoolConnectionProxy, txs: list[TransactionEvent],
                              result: WriteResult) -> None:
    upserts = []
    seq_rows = []
    for ev in txs:
        # Started/Updated bound the start from above (LEAST keeps the earliest); an Ended
        # alone says nothing about when the session began, so it leaves started_at open.
        started_at = ev.time if ev.kind != "ended" else None
        stopped_at = ev.time if ev.kind == "ended" else None
        upserts.append((ev.charge_point_id, ev.transaction_uid, ev.ocpp16_transaction_id, ev.evse_id,
                        ev.connector_id, ev.id_token, started_at, ev.meter_start_wh, stopped_at,
                        ev.meter_stop_wh, ev.stop_reason, ev.stop_id_token, ev.charging_state, ev.remote_start_id,
                        ev.seq_no, ev.offline, ev.flags))
        if ev.seq_no is not None:
            seq_rows.append((ev.charge_point_id, ev.transaction_uid, ev.seq_no, ev.kind.capitalize(), ev.time,
                             ev.trigger_reason or "", ev.offline, ev.received_at, ev.charging_state))
    # Key order, so that concurrent writers lock transaction rows in the same order; the
    # merges are order-independent, so sorting changes no result.
    upserts.sort(key=lambda row: (row[0], row[1], row[14] if row[14] is not None else -1))
    seq_rows.sort(key=lambda row: (row[0], row[1], row[2]))
    await conn.executemany(_TX_UPSERT, upserts)
    result.inserted["transactions"] = len(upserts)
    if seq_rows:
        await conn.executemany(_TX_EVENT_INSERT, seq_rows)
