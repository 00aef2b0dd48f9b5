"""EV-ChART module 2 (charging sessions, reporting.md §1.5), streamed (``csms.reporting.csv_stream``).

One row per session that started in the period (the quarter, UTC), in start order; columns,
byte-order mark, CRLF and ``…Z`` times as :mod:`csms.reporting.evchart` writes them. Values are
formatted by PostgreSQL: energy_kwh = max(meterStop − meterStart, 0) in kWh rounded half up to
0.01 (exact decimal arithmetic on the stored meter readings); power_kw = the session's highest
phase-less Power.Active.Import sample; session_error = the failure stop reason, or
NoEnergyDelivered below 0.5 kWh (``evchart.session_error``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

import asyncpg

from csms.reporting import csv_stream, evchart
from schemas.port_state import FAILED_STOP_REASONS, MIN_SUCCESS_WH

ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'


def payment_sql(token_type: str, default: str) -> str:
    """evchart.PAYMENT_METHODS as a CASE over ``token_type`` (constants of our own, not user data)."""
    cases = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in sorted(evchart.PAYMENT_METHODS.items()))
    return f"CASE {token_type} {cases} ELSE {default} END"


def failed_sql() -> str:
    return "ARRAY[" + ", ".join(f"'{r}'" for r in sorted(FAILED_STOP_REASONS)) + "]::text[]"


# $1/$2 the slice of started_at; the latest instant its sessions' samples need (the last stop, or now
# for a session still open).
BOUNDS_SQL = """
SELECT count(*) AS n, max(COALESCE(t.stopped_at, now())) AS upper FROM transactions t
WHERE t.started_at >= $1 AND t.started_at < $2
"""

# $1/$2 the slice, $3 the samples' upper bound, $4 network_provider. Peaks in one pass over the slice's
# power samples (constant time bounds: only those chunks are read).
ROWS_SQL = f"""
WITH t AS MATERIALIZED (
    SELECT t.charge_point_id, t.transaction_uid, t.evse_id, t.connector_id, t.started_at, t.stopped_at,
           t.stop_reason, t.energy_wh, t.id_token
    FROM transactions t WHERE t.started_at >= $1 AND t.started_at < $2),
peaks AS (
    SELECT m.charge_point_id, m.transaction_uid, max(m.value) / 1000 AS peak_kw
    FROM meter_samples m JOIN t ON m.charge_point_id = t.charge_point_id AND m.transaction_uid = t.transaction_uid
    WHERE m.measurand = 'Power.Active.Import' AND m.phase = '' AND m.time >= $1 AND m.time <= $3
    GROUP BY 1, 2)
SELECT {csv_stream.text("COALESCE(c.location_id, t.charge_point_id)")},
       {csv_stream.text("COALESCE(NULLIF(e.uid, ''), t.charge_point_id || '*' || COALESCE(t.connector_id, 0))")},
       {csv_stream.text("$4::text")}, {csv_stream.text("t.charge_point_id")},
       {csv_stream.text("t.transaction_uid")}, t.connector_id,
       to_char(t.started_at AT TIME ZONE 'UTC', '{ISO_UTC}'), to_char(t.stopped_at AT TIME ZONE 'UTC', '{ISO_UTC}'),
       CASE WHEN t.stop_reason = ANY({failed_sql()}) THEN {csv_stream.text("t.stop_reason")}
            WHEN t.energy_wh < {MIN_SUCCESS_WH} THEN 'NoEnergyDelivered' END,
       NULL,
       -- GREATEST would turn NULL (no reading) into 0
       CASE WHEN t.energy_wh IS NOT NULL THEN round(GREATEST(t.energy_wh, 0) / 1000, 2) END,
       CASE WHEN pk.peak_kw IS NOT NULL THEN round(GREATEST(pk.peak_kw, 0)::numeric, 2) END,
       {payment_sql("COALESCE(tok.token_type, '')", "'other'")},
       NULL
FROM t JOIN charge_points c ON c.id = t.charge_point_id
LEFT JOIN evses e ON e.charge_point_id = t.charge_point_id AND e.evse_id = t.evse_id
LEFT JOIN id_tokens tok ON tok.id_token = t.id_token
LEFT JOIN peaks pk ON pk.charge_point_id = t.charge_point_id AND pk.transaction_uid = t.transaction_uid
ORDER BY t.started_at, t.charge_point_id, t.transaction_uid
"""


def stream_module_2(db: asyncpg.Pool, window: tuple[datetime, datetime],
                    network_provider: str) -> AsyncGenerator[bytes, None]:
    """EV-ChART module 2 CSV over ``window`` (UTF-8 with BOM, header, CRLF rows), streamed."""
    return csv_stream.stream(db, columns=evchart.MODULE_2, window=window, bounds_sql=BOUNDS_SQL,
                             rows_sql=ROWS_SQL, args=(network_provider,))
