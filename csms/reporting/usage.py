"""Builds utilization inputs from TimescaleDB: per port, occupancy and charging intervals from
the status history, energy from the sessions.

Occupied: OCPP 1.6 Preparing, Charging, SuspendedEV, SuspendedEVSE, Finishing; OCPP 2.0.1
Occupied. Charging: 1.6 status Charging; 2.0.1 the spans where TransactionEvents report
chargingState Charging (2.0.1 has no Charging connector status). Energy: sessions that started
in the window (meterStop − meterStart).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from csms.reporting.hours import opening_intervals
from csms.reporting.intervals import Interval, intersect, merge
from csms.reporting.utilization import Port, Session

OCCUPIED = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"})


def _spans(rows: list[tuple[datetime, str]], wanted: frozenset[str], until: datetime) -> list[Interval]:
    out: list[Interval] = []
    if not rows:
        return out
    for (moment, state), nxt in zip(rows, [*rows[1:], None], strict=True):
        end = nxt[0] if nxt is not None else until
        if state in wanted and end > moment:
            out.append((moment, end))
    return merge(out)


async def station_ports(db: asyncpg.Pool, location_id: str, window: Interval) -> tuple[list[Port], str] | None:
    loc = await db.fetchrow("SELECT time_zone, opening_hours::text AS hours FROM locations WHERE id = $1",
                            location_id)
    if loc is None:
        return None
    import json

    hours = json.loads(loc["hours"]) if loc["hours"] else None
    opening = tuple(opening_intervals(hours, loc["time_zone"], window))
    ports: list[Port] = []
    evses = await db.fetch(
        """SELECT e.charge_point_id, e.evse_id, max(c.rated_power_w) AS rated_w
           FROM evses e JOIN charge_points cp ON cp.id = e.charge_point_id
           JOIN connectors c ON c.charge_point_id = e.charge_point_id AND c.evse_id = e.evse_id
           WHERE cp.location_id = $1 GROUP BY e.charge_point_id, e.evse_id ORDER BY 1, 2""", location_id)
    for evse in evses:
        cp, n = evse["charge_point_id"], evse["evse_id"]
        status_rows = await db.fetch(
            """(SELECT time, status, received_at FROM connector_status
                WHERE charge_point_id = $1 AND evse_id = $2 AND time < $3
                ORDER BY time DESC, received_at DESC LIMIT 1)
               UNION ALL
               (SELECT time, status, received_at FROM connector_status WHERE charge_point_id = $1 AND evse_id = $2
                AND time >= $3 AND time < $4) ORDER BY time, received_at""", cp, n, window[0], window[1])
        statuses = [(r["time"], r["status"]) for r in status_rows]
        occupied = intersect(_spans(statuses, OCCUPIED, window[1]), [window])
        charging = intersect(_spans(statuses, frozenset({"Charging"}), window[1]), [window])
        tx_rows = await db.fetch(
            """SELECT e.time, COALESCE(e.charging_state, '') AS state, t.transaction_uid
               FROM transaction_events e JOIN transactions t
                 ON t.charge_point_id = e.charge_point_id AND t.transaction_uid = e.transaction_uid
               WHERE e.charge_point_id = $1 AND t.evse_id = $2 AND e.time < $4
                 AND COALESCE(t.stopped_at, $4) > $3 ORDER BY e.time""", cp, n, window[0], window[1])
        by_tx: dict[str, list[tuple[datetime, str]]] = {}
        for r in tx_rows:
            by_tx.setdefault(r["transaction_uid"], []).append((r["time"], r["state"] or "_same"))
        for events in by_tx.values():
            carried: list[tuple[datetime, str]] = []
            state = ""
            for moment, st in events:
                state = state if st == "_same" else st
                carried.append((moment, state))
            charging = merge([*charging, *intersect(_spans(carried, frozenset({"Charging"}), carried[-1][0]),
                                                     [window])])
        energy = await db.fetchval(
            "SELECT COALESCE(sum(energy_wh), 0)::float8 / 1000 FROM transactions "
            "WHERE charge_point_id = $1 AND evse_id = $2 AND started_at >= $3 AND started_at < $4",
            cp, n, window[0], window[1])
        starts = await db.fetch(
            "SELECT started_at, stopped_at FROM transactions WHERE charge_point_id = $1 AND evse_id = $2 "
            "AND started_at >= $3 AND started_at < $4", cp, n, window[0], window[1])
        sessions = _sessions(occupied, charging, [(r["started_at"], r["stopped_at"]) for r in starts], energy)
        ports.append(Port(rated_kw=float(evse["rated_w"]) / 1000, opening=opening, sessions=tuple(sessions)))
    return ports, loc["time_zone"]


def _sessions(occupied: list[Interval], charging: list[Interval], starts: list[tuple[datetime, datetime | None]],
              energy_kwh: float) -> list[Session]:
    """One Session per occupied span; energy is spread over spans by their charging minutes."""
    total_charging = sum((e - s).total_seconds() for s, e in charging) or 1.0
    out = []
    for span in occupied:
        chg = tuple(intersect(charging, [span]))
        share = sum((e - s).total_seconds() for s, e in chg) / total_charging
        out.append(Session(plugged=span, charging=chg, energy_kwh=energy_kwh * share))
    del starts
    return out
