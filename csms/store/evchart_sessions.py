"""EV-ChART module 2 (charging sessions, reporting.md §1.5), streamed (``csms.store.csv_stream``).

One row per session that started in the quarter at its station (months are station-local: the
quarter in the station's IANA zone, as modules 3 and 4), in start order; columns, byte-order mark,
CRLF and ``…Z`` times as :mod:`csms.reporting.evchart` writes them. Values are formatted by
PostgreSQL: energy_kwh = max(meterStop − meterStart, 0) in kWh rounded half up to 0.01 (exact
decimal arithmetic on the stored meter readings); power_kw = the session's highest phase-less
Power.Active.Import sample between its start and its stop (while open: so far), read from the
roll-up's per-session summary or computed from the samples (``csms.store.session_rows``);
session_error = the failure stop reason, or NoEnergyDelivered below 0.5 kWh (``evchart.session_error``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime

import asyncpg

from csms.reporting import evchart
from csms.store import csv_stream, session_rows
from schemas.port_state import FAILED_STOP_REASONS, MIN_SUCCESS_WH

ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'   # csms.api.common.utc_text, as PostgreSQL's to_char
Interval = tuple[datetime, datetime]


def payment_sql(token_type: str, default: str) -> str:
    """evchart.PAYMENT_METHODS as a CASE over ``token_type`` (constants of our own, not user data)."""
    cases = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in sorted(evchart.PAYMENT_METHODS.items()))
    return f"CASE {token_type} {cases} ELSE {default} END"


def failed_sql() -> str:
    return "ARRAY[" + ", ".join(f"'{r}'" for r in sorted(FAILED_STOP_REASONS)) + "]::text[]"


# Each station's quarter: $3 zones, $4/$5 the quarter in each (UTC instants); a station without a
# location, or a location without a zone, is in UTC (as every report has it). A filter, not a join:
# the slice's sessions are read by start and then kept or not.
_ZONE_JOINS = "LEFT JOIN locations l ON l.id = c.location_id"
_ZONE = "array_position($3::text[], COALESCE(l.time_zone, 'UTC'))"
_ZONE_WHERE = f"AND t.started_at >= ($4::timestamptz[])[{_ZONE}] AND t.started_at < ($5::timestamptz[])[{_ZONE}]"
STATION_ZONES_SQL = """
SELECT DISTINCT COALESCE(l.time_zone, 'UTC') AS zone FROM charge_points c LEFT JOIN locations l ON l.id = c.location_id
"""

# The slices' counts and raw spans over every station (a few sessions more at the window's edges, which
# the rows statement leaves out): no zone lookup per session.
BOUNDS_SQL = session_rows.bounds_sql()

# $6 network_provider.
ROWS_SQL = session_rows.rows_sql(
    fields="t.evse_id, t.connector_id, t.stop_reason, t.energy_wh, t.id_token, c.location_id", n_args=4,
    joins=_ZONE_JOINS, where=_ZONE_WHERE,
    outer_joins="""LEFT JOIN evses e ON e.charge_point_id = f.charge_point_id AND e.evse_id = f.evse_id
LEFT JOIN id_tokens tok ON tok.id_token = f.id_token""",
    columns=", ".join((
        csv_stream.text("COALESCE(f.location_id, f.charge_point_id)"),
        csv_stream.text("COALESCE(NULLIF(e.uid, ''), f.charge_point_id || '*' || COALESCE(f.connector_id, 0))"),
        # network_provider is checked against ^[a-z0-9_]+$ and a charge point id is printable and never
        # empty (csms.ocpp.identity): neither needs the line-break check
        "$6::text", "f.charge_point_id", csv_stream.text("f.transaction_uid"),
        "f.connector_id",
        f"to_char(f.started_at AT TIME ZONE 'UTC', '{ISO_UTC}')",
        f"to_char(f.stopped_at AT TIME ZONE 'UTC', '{ISO_UTC}')",
        f"""CASE WHEN f.stop_reason = ANY({failed_sql()}) THEN {csv_stream.text("f.stop_reason")}
            WHEN f.energy_wh < {MIN_SUCCESS_WH} THEN 'NoEnergyDelivered' END""",
        "NULL",
        # GREATEST would turn NULL (no reading) into 0
        "CASE WHEN f.energy_wh IS NOT NULL THEN round(GREATEST(f.energy_wh, 0) / 1000, 2) END",
        "CASE WHEN f.peak_power_w IS NOT NULL THEN round(GREATEST(f.peak_power_w / 1000, 0)::numeric, 2) END",
        payment_sql("COALESCE(tok.token_type, '')", "'other'"),
        "NULL")))


async def station_zones(db: asyncpg.Pool) -> list[str]:
    """The time zones of the stations (charge points without a location: UTC)."""
    return sorted(r["zone"] for r in await db.fetch(STATION_ZONES_SQL))


async def stream_module_2(db: asyncpg.Pool, quarters: Interval | Mapping[str, Interval],
                          network_provider: str) -> AsyncGenerator[bytes, None]:
    """EV-ChART module 2 CSV (UTF-8 with BOM, header, CRLF rows), streamed: the sessions that started
    in their station's quarter, ``quarters`` mapping each station zone to its quarter (UTC instants,
    ``evchart.quarter_bounds(year, quarter, zone)``); one interval: that window at every station."""
    if not isinstance(quarters, Mapping):
        quarters = dict.fromkeys(await station_zones(db), quarters)
    zones = sorted(quarters)
    if not zones:
        yield csv_stream.header(evchart.MODULE_2)
        return
    window = (min(quarters[z][0] for z in zones), max(quarters[z][1] for z in zones))
    filters = (zones, [quarters[z][0] for z in zones], [quarters[z][1] for z in zones])
    rows = csv_stream.stream(db, columns=evchart.MODULE_2, window=window, bounds_sql=BOUNDS_SQL,
                             rows_sql=ROWS_SQL, args=(*filters, network_provider))
    async with contextlib.aclosing(rows):   # a client gone: the COPY ends, the connections go back
        async for chunk in rows:
            yield chunk
