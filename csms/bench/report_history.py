"""Generated history for the report benchmark (csms/bench/reports.py), written inside PostgreSQL.

Per port and day six sessions (Preparing → Charging → Finishing → Available, a transaction and three
meter samples each), one fault a month per port, one disconnect a month per charge point, all from
generate_series and deterministic hashes, into the tables the gateway fills.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg

ZONES = ("America/Los_Angeles", "Asia/Kolkata", "Europe/Berlin", "UTC")
SESSIONS_PER_DAY = 6

_REGISTRY_SQL = """
INSERT INTO locations (id, name, country, latitude, longitude, time_zone, is_public, operational_since)
SELECT 'L' || lpad(n::text, 4, '0'), 'Site ' || n, 'USA', 10 + n % 50, -100 + n % 90,
       ($2::text[])[1 + n % 4], true, $3
FROM generate_series(0, $1 - 1) n;
"""

_CHARGERS_SQL = """
INSERT INTO charge_points (id, location_id, ocpp_version, registration_status)
SELECT 'B' || lpad(n::text, 4, '0'), 'L' || lpad((n / 2)::text, 4, '0'), '1.6', 'Accepted'
FROM generate_series(0, $1 - 1) n
"""
_EVSES_SQL = """
INSERT INTO evses (charge_point_id, evse_id, uid, operational_since)
SELECT 'B' || lpad((p / 2)::text, 4, '0'), p % 2 + 1, 'EVSE-' || p, $2 FROM generate_series(0, $1 - 1) p
"""
_CONNECTORS_SQL = """
INSERT INTO connectors (charge_point_id, evse_id, connector_id, power_type, rated_power_w)
SELECT 'B' || lpad((p / 2)::text, 4, '0'), p % 2 + 1, 1, CASE WHEN p / 2 % 2 = 0 THEN 'DC' ELSE 'AC_3_PHASE' END,
       CASE WHEN p / 2 % 2 = 0 THEN 150000 ELSE 22000 END FROM generate_series(0, $1 - 1) p
"""

# One month of sessions: port p, day d, session k; start between 06:00 and 19:29 UTC, 30–90 minutes.
_SESSIONS = """
WITH s AS (
    SELECT 'B' || lpad((p / 2)::text, 4, '0') AS cp, p % 2 + 1 AS evse, d, k,
           CASE WHEN p / 2 % 2 = 0 THEN 150000 ELSE 22000 END AS rated_w,
           $1::timestamptz
               + make_interval(days => d, mins => 360 + k * 150 + abs(hashtext(p || ':' || d || ':' || k)) % 60)
               AS start,
           30 + abs(hashtext(k || ':' || d || ':' || p)) % 61 AS minutes
    FROM generate_series(0, $2 - 1) p, generate_series($3, $4 - 1) d, generate_series(0, 5) k)
"""

_STATUS_SQL = _SESSIONS + """
INSERT INTO connector_status (time, charge_point_id, evse_id, connector_id, status, received_at)
SELECT s.start + make_interval(mins => CASE v.n WHEN 0 THEN 0 WHEN 1 THEN 5 WHEN 2 THEN s.minutes - 10
                                              ELSE s.minutes END), s.cp, s.evse, 1, v.status, s.start
FROM s, (VALUES (0, 'Preparing'), (1, 'Charging'), (2, 'Finishing'), (3, 'Available')) AS v(n, status)
"""

_TX_SQL = _SESSIONS + """
INSERT INTO transactions (charge_point_id, transaction_uid, evse_id, connector_id, id_token, started_at,
                          meter_start_wh, stopped_at, meter_stop_wh, stop_reason)
SELECT s.cp, 'S' || s.evse || '-' || s.d || '-' || s.k, s.evse, 1, 'TAG1', s.start, 0,
       s.start + make_interval(mins => s.minutes - 10), round(s.rated_w * (s.minutes - 15) / 60.0 * 0.8), 'Local'
FROM s
"""

_METER_SQL = _SESSIONS + """
INSERT INTO meter_samples (time, charge_point_id, evse_id, connector_id, transaction_uid, measurand, context,
                           value, unit, raw_value, received_at)
SELECT s.start + make_interval(mins => v.at_min), s.cp, s.evse, 1, 'S' || s.evse || '-' || s.d || '-' || s.k,
       v.measurand, 'Sample.Periodic', v.value, v.unit, v.value::text, s.start
FROM s CROSS JOIN LATERAL (VALUES
    (5, 'Energy.Active.Import.Register', 0::float8, 'Wh'),
    ((s.minutes - 10) / 2, 'Power.Active.Import', s.rated_w * 0.8, 'W'),
    (s.minutes - 10, 'Energy.Active.Import.Register', round(s.rated_w * (s.minutes - 15) / 60.0 * 0.8), 'Wh')
) AS v(at_min, measurand, value, unit)
"""

_FAULTS_SQL = """
INSERT INTO connector_status (time, charge_point_id, evse_id, connector_id, status, error_code, received_at)
SELECT $1::timestamptz + make_interval(days => m * 30 + 10 + p % 15, hours => 3, mins => v.n * (p % 7 + 1) * 20),
       'B' || lpad((p / 2)::text, 4, '0'), p % 2 + 1, 1, v.status, v.error, $1::timestamptz
FROM generate_series(0, $2 - 1) p, generate_series(0, $3 - 1) m,
     (VALUES (0, 'Faulted', 'GroundFailure'), (1, 'Available', 'NoError')) AS v(n, status, error)
"""

_OFFLINE_SQL = """
INSERT INTO connection_events (time, charge_point_id, event, node_id)
SELECT $1::timestamptz + make_interval(days => m * 30 + 15 + c % 10, hours => 2, mins => v.n * (c % 5 + 1) * 10),
       'B' || lpad(c::text, 4, '0'), v.event, 'bench'
FROM generate_series(0, $2 - 1) c, generate_series(0, $3 - 1) m,
     (VALUES (0, 'disconnected'), (1, 'connected')) AS v(n, event)
"""


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def generate(pool: asyncpg.Pool, *, ports: int, months: int, end: datetime) -> dict[str, Any]:
    """Registry and history for ``ports`` ports over the ``months`` × 30 days before ``end``."""
    days = months * 30
    start = end - timedelta(days=days)
    began = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute(_REGISTRY_SQL, (ports + 3) // 4, list(ZONES), start - timedelta(days=60))
        await conn.execute(_CHARGERS_SQL, (ports + 1) // 2)
        await conn.execute(_EVSES_SQL, ports, start - timedelta(days=60))
        await conn.execute(_CONNECTORS_SQL, ports)
        for first in range(0, days, 30):
            last = min(days, first + 30)
            for sql in (_STATUS_SQL, _TX_SQL, _METER_SQL):
                await conn.execute(sql, start, ports, first, last)
            print(f"  generated days {first}–{last} of {days}", file=sys.stderr, flush=True)
        await conn.execute(_FAULTS_SQL, start, ports, months)
        await conn.execute(_OFFLINE_SQL, start, (ports + 1) // 2, months)
        await conn.execute("ANALYZE")
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")  # fixed table names
                  for t in ("connector_status", "transactions", "meter_samples", "connection_events")}
    return {"seconds": round(time.perf_counter() - began, 1), "rows": counts, "start": start.isoformat(),
            "end": end.isoformat()}


async def existing_history(pool: asyncpg.Pool) -> dict[str, Any]:
    print("  reusing the history already in the database", file=sys.stderr, flush=True)
    counts = {t: await pool.fetchval(f"SELECT count(*) FROM {t}")  # fixed table names
              for t in ("connector_status", "transactions", "meter_samples", "connection_events")}
    return {"seconds": 0.0, "rows": counts, "reused": True}
