"""Reading from TimescaleDB what the port state arithmetic (``schemas.port_state``) takes: each
port's statuses, transaction events and metered sessions, and the cut from which a port must be
computed afresh. Shared by the roll-up (``ingest/rollup.py``) and the reports (``csms.store``), so
both read the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.port_state import (
    EARLIEST,
    ENERGY_MEASURAND,
    LOOKBACK,
    OCCUPIED,
    UNTRUSTED_REGISTER_FLAGS,
    MeteredSession,
    PortHistory,
    PortKey,
    TxEvent,
    floor_bucket,
)

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
-- Rows before $7 (EARLIEST) are implausible and stay out of the arithmetic.
SELECT b.cp, b.evse, b.read_from, s.time, s.status FROM b CROSS JOIN LATERAL (
    (SELECT x.time, x.status, x.received_at FROM connector_status x
     WHERE x.charge_point_id = b.cp AND x.evse_id = b.evse AND x.time <= b.read_from AND x.time >= $7
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


# Energy: the sessions of each port that can have energy in [w0, $5) (a session that started before
# w0 − LOOKBACK has none there, session_energy), $6 the earliest w0 − LOOKBACK (a constant for the index).
_ENERGY_TX_SQL = """
SELECT v.cp, v.evse, t.transaction_uid AS uid, t.started_at,
       CASE WHEN t.stopped_at IS NOT NULL THEN GREATEST(t.started_at, t.stopped_at) END AS stop,
       t.meter_start_wh::float8 AS w0, t.meter_stop_wh::float8 AS w1
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(cp, evse, w0)
JOIN transactions t ON t.charge_point_id = v.cp AND t.evse_id = v.evse
WHERE t.started_at >= v.w0 - $4::interval AND t.started_at < $5 AND t.started_at >= $6
  AND (t.stopped_at IS NULL OR GREATEST(t.started_at, t.stopped_at) >= v.w0)
"""

# Their trusted register samples: $1 the charge points, [$2, $3] the sessions' time span (constants: only
# those chunks are read), $4 the measurand, $5 UNTRUSTED_REGISTER_FLAGS. Matched to the sessions in
# Python: one predictable scan, never a nested loop of sessions × chunks.
_ENERGY_SAMPLES_SQL = """
SELECT m.charge_point_id AS cp, m.transaction_uid AS uid, m.time, m.value FROM meter_samples m
WHERE m.charge_point_id = ANY($1::text[]) AND m.time >= $2 AND m.time <= $3 AND m.measurand = $4
  AND m.phase = '' AND m.location IN ('Outlet', '') AND m.quality_flags & $5 = 0 AND m.value <> 'NaN'::float8
  AND m.transaction_uid <> ''
"""

# Sessions running at each port's cut: the roll-up's buckets before the cut may lack a step that
# ends after it (interpolation looks ahead), so recomputing starts at such a session's start.
_RUNNING_SQL = """
SELECT v.cp, v.evse, min(t.started_at) AS started_at
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(cp, evse, cut)
JOIN transactions t ON t.charge_point_id = v.cp AND t.evse_id = v.evse
    AND t.started_at >= v.cut - $4::interval AND t.started_at < v.cut
    AND (t.stopped_at IS NULL OR t.stopped_at >= v.cut)
GROUP BY 1, 2
"""


async def settled_cuts(conn: asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool,
                       ports: Sequence[tuple[str, int, datetime]]) -> dict[PortKey, datetime]:
    """Per (charge point, EVSE, cut): the quarter hour from which the port must be computed
    afresh, the cut moved back to the start of any session running at it, never before
    ``EARLIEST``."""
    out = {(cp, evse): floor_bucket(max(cut, EARLIEST)) for cp, evse, cut in ports}
    if not ports:
        return out
    keys = list(out)
    for r in await conn.fetch(_RUNNING_SQL, [k[0] for k in keys], [k[1] for k in keys], [out[k] for k in keys],
                              LOOKBACK):
        key = (r["cp"], r["evse"])
        out[key] = min(out[key], floor_bucket(max(r["started_at"], EARLIEST)))
    return out


async def load_histories(conn: asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool,
                         ports: Sequence[tuple[str, int, datetime]], until: datetime) -> dict[PortKey, PortHistory]:
    """The rows each port's minutes in [window_from, until) depend on, ``ports`` being
    (charge point, EVSE, window_from): reading starts at the last time the port was free
    before window_from (so an occupancy in progress is read whole), at most ``LOOKBACK``."""
    if not ports:
        return {}
    cps, evses, starts = [p[0] for p in ports], [p[1] for p in ports], [p[2] for p in ports]
    rows = await conn.fetch(_STATUS_SQL, cps, evses, starts, list(OCCUPIED), LOOKBACK, until, EARLIEST)
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
    sessions = await load_sessions(conn, ports, until)
    return {key: PortHistory(statuses.get(key, []), list(txs.get(key, {}).values()), sessions.get(key, ()))
            for key in keys}


async def load_sessions(conn: asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool,
                        ports: Sequence[tuple[str, int, datetime]],
                        until: datetime) -> dict[PortKey, list[MeteredSession]]:
    """The metered sessions whose energy can fall in [window_from, until) of each port."""
    if not ports:
        return {}
    floor = min(p[2] for p in ports) - LOOKBACK
    sessions = await conn.fetch(_ENERGY_TX_SQL, [p[0] for p in ports], [p[1] for p in ports], [p[2] for p in ports],
                                LOOKBACK, until, floor)
    if not sessions:
        return {}
    readings: dict[tuple[str, str], list[tuple[datetime, float]]] = {(r["cp"], r["uid"]): [] for r in sessions}
    latest = max(r["stop"] or datetime.now(UTC) for r in sessions)
    for r in await conn.fetch(_ENERGY_SAMPLES_SQL, sorted({r["cp"] for r in sessions}),
                              min(r["started_at"] for r in sessions), latest, ENERGY_MEASURAND,
                              UNTRUSTED_REGISTER_FLAGS):
        found = readings.get((r["cp"], r["uid"]))
        if found is not None:
            found.append((r["time"], r["value"]))
    out: dict[PortKey, list[MeteredSession]] = {}
    for r in sorted(sessions, key=lambda r: (r["cp"], r["evse"], r["uid"])):
        out.setdefault((r["cp"], r["evse"]), []).append(
            MeteredSession(r["started_at"], r["stop"], r["w0"], r["w1"], readings[(r["cp"], r["uid"])]))
    return out
