"""Port state minutes: what utilization reports count, computed one way for both sides.

Definitions (reporting.md §5.4): a port (EVSE) is *occupied* while its connector status is
one of ``OCCUPIED`` (OCPP 1.6 Preparing, Charging, SuspendedEV, SuspendedEVSE, Finishing;
OCPP 2.0.1 Occupied) and *charging* while 1.6 reports Charging or a 2.0.1 transaction on it
last reported chargingState Charging (2.0.1 has no Charging connector status, Part 2
§E TransactionEvent). A state lasts until the next row; the last one lasts until the end of
the window. A 2.0.1 transaction stops charging at its Ended event.

The ingest side rolls these up into ``port_state_15m`` and ``port_occupancy_spans``; the
reports compute the not-yet-rolled-up remainder with the same functions, so both agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.intervals import Interval, intersect, merge

BUCKET = timedelta(minutes=15)
# An occupancy longer than this is not looked back for: its start is cut here.
LOOKBACK = timedelta(days=7)
OCCUPIED = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"})
# Session success (reporting.md §5.4): at least min_success_kwh = 0.5 and none of these stop reasons.
MIN_SUCCESS_WH = 500
FAILED_STOP_REASONS = frozenset({"EmergencyStop", "PowerLoss", "HardReset", "SoftReset", "Reboot", "GroundFault",
                                 "OvercurrentFault", "PowerQuality"})
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

PortKey = tuple[str, int]


def floor_bucket(moment: datetime) -> datetime:
    """Start of the 15-minute bucket holding ``moment`` (aligned in every zone in use)."""
    return moment - (moment - _EPOCH) % BUCKET


def ceil_bucket(moment: datetime) -> datetime:
    start = floor_bucket(moment)
    return start if start == moment else start + BUCKET


@dataclass(frozen=True, slots=True)
class TxEvent:
    time: datetime
    charging_state: str | None     # None: not reported in this event, the previous one holds
    ended: bool


@dataclass(frozen=True, slots=True)
class PortHistory:
    """Rows of one port from ``read_from`` on, the first being the status in force then."""

    statuses: Sequence[tuple[datetime, str]]
    transactions: Sequence[Sequence[TxEvent]] = ()


@dataclass(frozen=True, slots=True)
class Span:
    """One occupancy, plug-in to plug-out."""

    started_at: datetime
    ended_at: datetime
    charging_s: float
    post_charge_idle_s: float | None


@dataclass(slots=True)
class PortMinutes:
    buckets: dict[datetime, tuple[float, float]] = field(default_factory=dict)  # start → (occupied_s, charging_s)
    spans: list[Span] = field(default_factory=list)


def _state_spans(rows: Sequence[tuple[datetime, str]], wanted: frozenset[str], until: datetime) -> list[Interval]:
    out: list[Interval] = []
    if not rows:
        return out
    for (moment, state), nxt in zip(rows, [*rows[1:], None], strict=True):
        end = nxt[0] if nxt is not None else until
        if state in wanted:
            out.append((moment, min(end, until)))
    return merge(out)


def _tx_charging(events: Sequence[TxEvent], until: datetime) -> list[Interval]:
    carried: list[tuple[datetime, str]] = []
    state = ""
    for event in events:
        state = event.charging_state or state
        carried.append((event.time, "" if event.ended else state))
    return _state_spans(carried, frozenset({"Charging"}), until)


def occupied_and_charging(history: PortHistory, until: datetime) -> tuple[list[Interval], list[Interval]]:
    occupied = _state_spans(history.statuses, OCCUPIED, until)
    charging = _state_spans(history.statuses, frozenset({"Charging"}), until)
    for events in history.transactions:
        charging.extend(_tx_charging(events, until))
    return occupied, merge(charging)


def _add_to_buckets(out: dict[datetime, list[float]], intervals: Iterable[Interval], index: int) -> None:
    for start, end in intervals:
        cursor = start
        while cursor < end:
            bucket = floor_bucket(cursor)
            stop = min(end, bucket + BUCKET)
            out.setdefault(bucket, [0.0, 0.0])[index] += (stop - cursor).total_seconds()
            cursor = stop


def port_minutes(history: PortHistory, window: Interval) -> PortMinutes:
    """Occupied and charging seconds per 15-minute bucket inside ``window``, and the
    occupancies that ended inside it (an occupancy still open at the window's end is not one)."""
    occupied, charging = occupied_and_charging(history, window[1])
    sums: dict[datetime, list[float]] = {}
    _add_to_buckets(sums, intersect(occupied, [window]), 0)
    _add_to_buckets(sums, intersect(charging, [window]), 1)
    result = PortMinutes(buckets={b: (v[0], v[1]) for b, v in sorted(sums.items())})
    j = 0   # both lists are sorted and disjoint: one pass over the charging intervals
    for start, end in occupied:
        while j < len(charging) and charging[j][1] <= start:
            j += 1
        if not window[0] <= end < window[1]:
            continue
        charged = 0.0
        last_charge: datetime | None = None
        k = j
        while k < len(charging) and charging[k][0] < end:
            s, e = max(charging[k][0], start), min(charging[k][1], end)
            if e > s:
                charged += (e - s).total_seconds()
                last_charge = e
            k += 1
        idle = (end - last_charge).total_seconds() if last_charge is not None else None
        result.spans.append(Span(start, end, charged, idle))
    return result


_STATUS_SQL = """
WITH p AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS p(cp, evse, w0)),
-- MATERIALIZED: read_from is computed once per port, not re-planned into every chunk scan.
b AS MATERIALIZED (
    SELECT p.cp, p.evse, GREATEST(p.w0 - $5::interval, (
        SELECT x.time FROM connector_status x
        WHERE x.charge_point_id = p.cp AND x.evse_id = p.evse AND x.time < p.w0
          AND x.time >= p.w0 - $5::interval AND NOT (x.status = ANY($4::text[]))
        ORDER BY x.time DESC LIMIT 1)) AS read_from
    FROM p)
SELECT b.cp, b.evse, b.read_from, s.time, s.status FROM b CROSS JOIN LATERAL (
    (SELECT x.time, x.status, x.received_at FROM connector_status x
     WHERE x.charge_point_id = b.cp AND x.evse_id = b.evse AND x.time <= b.read_from
     ORDER BY x.time DESC, x.received_at DESC LIMIT 1)
    UNION ALL
    (SELECT x.time, x.status, x.received_at FROM connector_status x
     WHERE x.charge_point_id = b.cp AND x.evse_id = b.evse AND x.time > b.read_from AND x.time < $6)
) s
ORDER BY b.cp, b.evse, s.time, s.received_at
"""

_TX_SQL = """
WITH b AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS b(cp, evse, read_from))
SELECT b.cp, b.evse, e.transaction_uid, e.time, e.charging_state, e.event_type = 'Ended' AS ended
FROM b
JOIN transactions t ON t.charge_point_id = b.cp AND t.evse_id = b.evse
    AND t.started_at >= b.read_from - $4::interval AND t.started_at < $5
    AND (t.stopped_at IS NULL OR t.stopped_at >= b.read_from)
JOIN transaction_events e ON e.charge_point_id = t.charge_point_id AND e.transaction_uid = t.transaction_uid
    AND e.time < $5
ORDER BY b.cp, b.evse, e.transaction_uid, e.time, e.seq_no
"""


async def load_histories(conn: asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool,
                         ports: Sequence[tuple[str, int, datetime]], until: datetime) -> dict[PortKey, PortHistory]:
    """The rows each port's minutes in [window_from, until) depend on, ``ports`` being
    (charge point, EVSE, window_from): reading starts at the last time the port was free
    before window_from (so an occupancy in progress is read whole), at most ``LOOKBACK``."""
    if not ports:
        return {}
    cps, evses, starts = [p[0] for p in ports], [p[1] for p in ports], [p[2] for p in ports]
    rows = await conn.fetch(_STATUS_SQL, cps, evses, starts, list(OCCUPIED), LOOKBACK, until)
    statuses: dict[PortKey, list[tuple[datetime, str]]] = {}
    read_from: dict[PortKey, datetime] = {}
    for r in rows:
        key = (r["cp"], r["evse"])
        statuses.setdefault(key, []).append((r["time"], r["status"]))
        read_from[key] = r["read_from"]
    for cp, evse, start in ports:
        read_from.setdefault((cp, evse), start - LOOKBACK)
    keys = list(read_from)
    tx_rows = await conn.fetch(_TX_SQL, [k[0] for k in keys], [k[1] for k in keys], [read_from[k] for k in keys],
                               LOOKBACK, until)
    txs: dict[PortKey, dict[str, list[TxEvent]]] = {}
    for r in tx_rows:
        txs.setdefault((r["cp"], r["evse"]), {}).setdefault(r["transaction_uid"], []).append(
            TxEvent(r["time"], r["charging_state"], r["ended"]))
    return {key: PortHistory(statuses.get(key, []), list(txs.get(key, {}).values())) for key in keys}
