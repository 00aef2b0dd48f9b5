"""Reads what ports' uptime needs from TimescaleDB: the status rows outages depend on, their
charge points' connector-0 statuses and connectivity, and where each port's state becomes known.
Port details and exclusions: ``csms.store.report_fleet``; the arithmetic: ``csms.reporting.outages``
and ``csms.reporting.uptime``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from csms.reporting.outages import ConnectivityRow, PortTimeline, StatusChange, lookback_start
from schemas.intervals import Interval

# Only what outages depend on (so the cost follows the number of faults, not of status
# changes): the status in force at the window's start, the first row inside it (where
# knowledge starts), every Faulted/Unavailable row and the row that ended each — and, when
# the status in force at the start is an outage, the row that began it (the first row after
# the last non-outage row), so that an outage's start is the same whatever the window.
_SPARSE_STATUS_SQL = """
WITH p AS MATERIALIZED (SELECT * FROM unnest($1::text[], $2::int[]) AS p(cp, evse)),
-- every outage row in the window: one scan of each chunk's partial index, not one per port
down AS MATERIALIZED (
    SELECT x.charge_point_id, x.evse_id, x.time, x.status, x.error_code, x.received_at
    FROM connector_status x JOIN p ON x.charge_point_id = p.cp AND x.evse_id = p.evse
    WHERE x.status IN ('Faulted', 'Unavailable') AND x.time >= $3 AND x.time < $4),
edges AS MATERIALIZED (
    SELECT x.charge_point_id, x.evse_id, x.time, x.status, x.error_code, x.received_at FROM p
    CROSS JOIN LATERAL (
        (SELECT * FROM connector_status x WHERE x.charge_point_id = p.cp AND x.evse_id = p.evse AND x.time < $3
         ORDER BY x.time DESC, x.received_at DESC LIMIT 1)
        UNION ALL
        (SELECT * FROM connector_status x WHERE x.charge_point_id = p.cp AND x.evse_id = p.evse
         AND x.time >= $3 AND x.time < $4 ORDER BY x.time, x.received_at LIMIT 1)) x),
starts AS (
    SELECT s.charge_point_id, s.evse_id, s.time, s.status, s.error_code, s.received_at FROM edges e
    LEFT JOIN LATERAL (
        SELECT u.time, u.received_at FROM connector_status u
        WHERE u.charge_point_id = e.charge_point_id AND u.evse_id = e.evse_id AND u.time <= e.time
          AND u.status NOT IN ('Faulted', 'Unavailable') AND (u.time, u.received_at) < (e.time, e.received_at)
        ORDER BY u.time DESC, u.received_at DESC LIMIT 1) up ON true
    CROSS JOIN LATERAL (
        SELECT s.* FROM connector_status s
        WHERE s.charge_point_id = e.charge_point_id AND s.evse_id = e.evse_id AND s.time <= e.time
          AND s.time >= COALESCE(up.time, '-infinity')
          AND (up.time IS NULL OR (s.time, s.received_at) > (up.time, up.received_at))
        ORDER BY s.time, s.received_at LIMIT 1) s
    WHERE e.time < $3 AND e.status IN ('Faulted', 'Unavailable')),
d AS (SELECT * FROM down UNION ALL SELECT * FROM edges),
-- The row after each outage row: the roll-up's pair (migration 0008 status_successor) while its
-- successor lies before the charge point's roll-up cut-off (no row can have been stored between the
-- two since: it would have marked the port dirty from its time), else looked up.
cut AS (
    SELECT c.cp, CASE WHEN w.rolled_until IS NULL THEN '-infinity'::timestamptz
                      ELSE LEAST(w.rolled_until, (SELECT min(x.since) FROM port_state_dirty x
                                                  WHERE x.charge_point_id = c.cp)) END AS at
    FROM (SELECT DISTINCT p.cp FROM p) c, (SELECT (SELECT rolled_until FROM port_state_watermark) AS rolled_until) w),
nx AS MATERIALIZED (
    SELECT d.charge_point_id, d.evse_id, d.time, d.received_at, x.next_time, x.next_status, x.next_error_code,
           x.next_received_at
    FROM d JOIN cut ON cut.cp = d.charge_point_id
    LEFT JOIN status_successor x ON x.charge_point_id = d.charge_point_id AND x.evse_id = d.evse_id
        AND x.time = d.time AND x.received_at = d.received_at AND x.next_time < cut.at
    WHERE d.status IN ('Faulted', 'Unavailable'))
SELECT d.charge_point_id AS cp, d.evse_id AS evse, d.time, d.status, d.error_code, d.received_at FROM d
UNION
SELECT * FROM starts
UNION
SELECT nx.charge_point_id, nx.evse_id, nx.next_time, nx.next_status, nx.next_error_code, nx.next_received_at
FROM nx WHERE nx.next_time < $4
UNION
SELECT nx.charge_point_id, nx.evse_id, n.time, n.status, n.error_code, n.received_at FROM nx
CROSS JOIN LATERAL (
    SELECT n.time, n.status, n.error_code, n.received_at FROM connector_status n
    WHERE n.charge_point_id = nx.charge_point_id AND n.evse_id = nx.evse_id AND n.time >= nx.time AND n.time < $4
      AND (n.time, n.received_at) > (nx.time, nx.received_at)
    ORDER BY n.time, n.received_at LIMIT 1) n
WHERE nx.next_time IS NULL
"""

# Connectivity in the window, and the state at its start under the epoch rule
# (csms.reporting.outages.offline_periods): the state is that of the highest epoch seen so
# far, so it is the latest row of the highest epoch before the window — not simply the latest
# row, which may be a replaced socket's late "disconnected". A row without an epoch (stored
# before epochs existed) still counts when it is later than that row.
_CONNECTIVITY_SQL = """
WITH p AS (SELECT DISTINCT unnest($1::text[]) AS cp),
top AS (
    SELECT p.cp, t.time, t.event, t.epoch FROM p CROSS JOIN LATERAL (
        SELECT x.time, x.event, x.connection_epoch AS epoch FROM connection_events x
        WHERE x.charge_point_id = p.cp AND x.event <> 'boot' AND x.time < $2 AND x.connection_epoch IS NOT NULL
        ORDER BY x.connection_epoch DESC, x.time DESC LIMIT 1) t),
legacy AS (
    SELECT p.cp, l.time, l.event, NULL::bigint AS epoch FROM p LEFT JOIN top ON top.cp = p.cp
    CROSS JOIN LATERAL (
        SELECT x.time, x.event FROM connection_events x
        WHERE x.charge_point_id = p.cp AND x.event <> 'boot' AND x.time < $2 AND x.connection_epoch IS NULL
          AND x.time > COALESCE(top.time, '-infinity')
        ORDER BY x.time DESC LIMIT 1) l),
inside AS (
    SELECT p.cp, c.time, c.event, c.epoch FROM p CROSS JOIN LATERAL (
        SELECT x.time, x.event, x.connection_epoch AS epoch FROM connection_events x
        WHERE x.charge_point_id = p.cp AND x.event <> 'boot' AND x.time >= $2 AND x.time < $3) c)
SELECT * FROM top UNION ALL SELECT * FROM legacy UNION ALL SELECT * FROM inside
ORDER BY cp, time
"""

_Row = tuple[datetime, datetime, str, str]   # time, received_at, status, error code


async def _status_rows(db: asyncpg.Pool, keys: Sequence[tuple[str, int]], window: Interval,
                       into: dict[tuple[str, int], set[_Row]]) -> None:
    rows = await db.fetch(_SPARSE_STATUS_SQL, [k[0] for k in keys], [k[1] for k in keys], window[0], window[1])
    for r in rows:
        into.setdefault((r["cp"], r["evse"]), set()).add((r["time"], r["received_at"], r["status"], r["error_code"]))


async def port_timelines(db: asyncpg.Pool, ports: Sequence[tuple[str, int]], window: Interval, *,
                         offline_grace: timedelta = timedelta(0)) -> dict[tuple[str, int], PortTimeline]:
    """What the uptime of each port over ``window`` depends on, for many ports in a few queries.

    When a charge-point-level outage or an offline period is in force at the window's start,
    the part that counts for the port is what the port's own status does not cover, which
    depends on the port's statuses since that outage began: those are read too (a second,
    small query over [that start, window start) for those ports only)."""
    cps = sorted({cp for cp, _ in ports})
    keys = sorted({*ports, *((cp, 0) for cp in cps)})
    statuses: dict[tuple[str, int], set[_Row]] = {}
    await _status_rows(db, keys, window, statuses)
    connectivity: dict[str, list[ConnectivityRow]] = {}
    for r in await db.fetch(_CONNECTIVITY_SQL, cps, window[0], window[1]):
        connectivity.setdefault(r["cp"], []).append((r["time"], r["event"], r["epoch"]))

    def ordered(key: tuple[str, int]) -> list[StatusChange]:
        return [StatusChange(t, status, code) for t, _, status, code in sorted(statuses.get(key, set()),
                                                                              key=lambda r: (r[0], r[1]))]

    def build() -> dict[tuple[str, int], PortTimeline]:
        return {(cp, evse): PortTimeline(port_status=ordered((cp, evse)), charger_status=ordered((cp, 0)),
                                         connectivity=connectivity.get(cp, [])) for cp, evse in ports}

    timelines = build()
    back: dict[tuple[str, int], datetime] = {}
    for key, timeline in timelines.items():
        start = lookback_start(timeline, window[0], offline_grace=offline_grace)
        if start is not None:
            back[key] = start
    if back:
        extra = sorted({*back, *((cp, 0) for cp, _ in back)})
        await _status_rows(db, extra, (min(back.values()), window[0]), statuses)
        timelines = build()
    return timelines


# Where each port's state becomes known (the same rule as ``outages.known_since``): the window's
# start if anything was recorded before it, else the first row inside the window, else nothing.
_KNOWN_SINCE_SQL = """
WITH p AS (SELECT * FROM unnest($1::text[], $2::int[]) AS p(cp, evse)),
c AS (  -- per charge point once: its connection events and connector-0 statuses
    SELECT c.cp, CASE
        WHEN EXISTS (SELECT 1 FROM connection_events x WHERE x.charge_point_id = c.cp AND x.event <> 'boot'
                     AND x.time < $3)
          OR EXISTS (SELECT 1 FROM connector_status x WHERE x.charge_point_id = c.cp AND x.evse_id = 0
                     AND x.time < $3)
        THEN $3::timestamptz
        ELSE LEAST(
            (SELECT min(x.time) FROM connection_events x WHERE x.charge_point_id = c.cp AND x.event <> 'boot'
             AND x.time >= $3 AND x.time < $4),
            (SELECT min(x.time) FROM connector_status x WHERE x.charge_point_id = c.cp AND x.evse_id = 0
             AND x.time >= $3 AND x.time < $4)) END AS since
    FROM (SELECT DISTINCT cp FROM p) c)
SELECT p.cp, p.evse, CASE
    WHEN c.since = $3 OR EXISTS (SELECT 1 FROM connector_status x WHERE x.charge_point_id = p.cp
                                 AND x.evse_id = p.evse AND x.time < $3)
    THEN $3::timestamptz
    ELSE LEAST(c.since, (SELECT min(x.time) FROM connector_status x WHERE x.charge_point_id = p.cp
                         AND x.evse_id = p.evse AND x.time >= $3 AND x.time < $4)) END AS known_since
FROM p JOIN c ON c.cp = p.cp
"""


async def known_since_of(db: asyncpg.Pool, ports: Sequence[tuple[str, int]],
                         window: Interval) -> dict[tuple[str, int], datetime | None]:
    """Per port, from when inside ``window`` its state is known (None: not at all)."""
    if not ports or window[1] <= window[0]:
        return {p: None for p in ports}
    rows = await db.fetch(_KNOWN_SINCE_SQL, [p[0] for p in ports], [p[1] for p in ports], window[0], window[1])
    return {(r["cp"], r["evse"]): r["known_since"] for r in rows}
