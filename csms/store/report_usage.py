"""Reads for the utilization reports and the energy statement: each port's roll-up part (quarter
hours, whole station-local days), the raw rows after its cut-off, the sessions by start, post-charge
idle percentiles and concurrent sessions. The arithmetic over them: ``csms.reporting.usage``
(which describes the rules); the raw rows' minutes: ``schemas.port_state``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from csms.reporting.energy_statement import CARRIED_IN_LOOKBACK
from csms.reporting.usage import (
    BucketUsage,
    PeriodEnergy,
    PortRef,
    add_available,
    add_peak_concurrency,
    add_port_minutes,
    add_totals,
    closed_groups,
    rolled_ranges,
    session_ranges,
)
from schemas.intervals import Interval
from schemas.port_state import (
    EARLIEST,
    FAILED_STOP_REASONS,
    MIN_SUCCESS_WH,
    SOLAR_HOURS,
    PortHistory,
    ceil_bucket,
    floor_bucket,
    port_minutes,
    session_energy,
)
from schemas.port_state_read import load_histories, settled_cuts

PERCENTILE_WORK_MEM_MB = 64


async def _cutoffs(db: asyncpg.Pool, ports: Sequence[PortRef], lo: datetime,
                   hi: datetime) -> dict[tuple[str, int], datetime]:
    """Per port, the time before which the roll-up is complete (and final: no session running
    there can still add energy before it)."""
    watermark = await db.fetchval("SELECT rolled_until FROM port_state_watermark")
    if watermark is None:
        return {(p.charge_point_id, p.evse_id): lo for p in ports}
    dirty = await db.fetch("SELECT charge_point_id, evse_id, since FROM port_state_dirty WHERE charge_point_id = "
                           "ANY($1::text[])", sorted({p.charge_point_id for p in ports}))
    marks: dict[tuple[str, int], datetime] = {}
    for r in dirty:
        marks[(r["charge_point_id"], r["evse_id"])] = floor_bucket(max(r["since"], EARLIEST))
    out = {}
    for p in ports:
        cut = watermark
        for key in ((p.charge_point_id, 0), (p.charge_point_id, p.evse_id)):
            if key in marks:
                cut = min(cut, marks[key])
        out[(p.charge_point_id, p.evse_id)] = cut
    # Only cuts inside the window matter; the others are settled as they are.
    inside = [(cp, evse, cut) for (cp, evse), cut in out.items() if cut < hi]
    out.update(await settled_cuts(db, inside))
    return out


# The roll-up part: quarter hours over ranges (up to two per port), whole station-local days
# over the middle of the range where the report's buckets are made of such days. Ports carry
# the number of their hours group; each group's closed hours are one multirange.
_ROLLED_SQL = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[], $5::int[])
           AS v(cp, evse, lo, hi, g)),
dv AS (SELECT * FROM unnest($9::text[], $10::int[], $11::date[], $12::date[]) AS dv(cp, evse, lo, hi)),
closed AS (SELECT g, range_agg(tstzrange(s, e)) AS mr
           FROM unnest($6::timestamptz[], $7::timestamptz[], $8::int[]) AS c(s, e, g) GROUP BY g),
q AS (
    -- LATERAL ... OFFSET 0 (not flattened): each range is a few index probes, never a scan of the roll-up
    SELECT r.bucket AS t, COALESCE(closed.mr @> r.bucket, false) AS shut, r.occupied_s::float8 AS occ,
           r.charging_s::float8 AS chg, r.energy_wh AS wh
    FROM v CROSS JOIN LATERAL (
        SELECT x.bucket, x.occupied_s, x.charging_s, x.energy_wh FROM port_state_15m x
        WHERE x.charge_point_id = v.cp AND x.evse_id = v.evse AND x.bucket >= v.lo AND x.bucket < v.hi
        OFFSET 0) r
    LEFT JOIN closed ON closed.g = v.g
    UNION ALL
    SELECT d.day::timestamp AT TIME ZONE $14, false, d.occupied_s, d.charging_s, d.energy_wh
    FROM port_state_day d JOIN dv ON d.charge_point_id = dv.cp AND d.evse_id = dv.evse
    WHERE d.day >= dv.lo AND d.day < dv.hi AND d.time_zone = $14)
SELECT width_bucket(q.t, $13::timestamptz[]) AS i, COALESCE(sum(q.occ) FILTER (WHERE NOT q.shut), 0) AS occ,
       COALESCE(sum(q.chg) FILTER (WHERE NOT q.shut), 0) AS chg, sum(q.wh) AS wh
FROM q GROUP BY 1
"""

# Post-charge idle percentiles over the roll-up's spans plus the spans computed from raw rows.
_SPANS_SQL = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS v(cp, evse, cut)),
x AS (
    SELECT r.ended_at, r.post_charge_idle_s::float8 AS idle
    FROM port_occupancy_spans r JOIN v ON r.charge_point_id = v.cp AND r.evse_id = v.evse
    WHERE r.ended_at >= $4 AND r.ended_at < v.cut AND r.post_charge_idle_s IS NOT NULL
    UNION ALL
    SELECT * FROM unnest($6::timestamptz[], $7::float8[]))
SELECT width_bucket(x.ended_at, $5::timestamptz[]) AS i,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY x.idle) AS p50,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY x.idle) AS p90
FROM x WHERE x.ended_at < $8
GROUP BY GROUPING SETS ((1), ())
"""

# Sessions by start: from the transactions over each port's ranges, and per station-local
# day from the roll-up where whole days serve.
_SESSIONS_SQL = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[]) AS v(cp, evse, lo, hi)),
dv AS (SELECT * FROM unnest($5::text[], $6::int[], $7::date[], $8::date[]) AS dv(cp, evse, lo, hi)),
q AS (
    SELECT t.started_at AS t, 1 AS n,
           (COALESCE(t.energy_wh, 0) >= $9 AND NOT (COALESCE(t.stop_reason, '') = ANY($10::text[])))::int AS ok
    FROM v CROSS JOIN LATERAL (   -- OFFSET 0: index probes per range, never a scan of every session
        SELECT x.started_at, x.energy_wh, x.stop_reason FROM transactions x
        WHERE x.charge_point_id = v.cp AND x.evse_id = v.evse AND x.started_at >= v.lo AND x.started_at < v.hi
        OFFSET 0) t
    UNION ALL
    SELECT d.day::timestamp AT TIME ZONE $12, d.sessions, d.successes
    FROM port_state_day d JOIN dv ON d.charge_point_id = dv.cp AND d.evse_id = dv.evse
    WHERE d.day >= dv.lo AND d.day < dv.hi AND d.time_zone = $12)
SELECT width_bucket(q.t, $11::timestamptz[]) AS i, COALESCE(sum(q.n), 0)::int AS n,
       COALESCE(sum(q.ok), 0)::int AS ok
FROM q GROUP BY GROUPING SETS ((1), ())
"""



async def usage(db: asyncpg.Pool, ports: Sequence[PortRef], bounds: Sequence[datetime], *,
                with_peak: bool = False, with_idle: bool = True,
                zone: ZoneInfo | None = None) -> tuple[list[BucketUsage], BucketUsage]:
    """Figures per report bucket [bounds[i], bounds[i+1]) over ``ports``, and over the whole window.
    ``with_idle=False`` skips the post-charge idle percentiles (they sort every span)."""
    lo, hi = bounds[0], bounds[-1]
    out = [BucketUsage(s, e, ports=len(ports)) for s, e in itertools.pairwise(bounds)]
    if not ports:
        return out, BucketUsage(lo, hi)
    groups = closed_groups(ports)
    group_of = {c: n for n, c in enumerate(groups)}
    add_available(out, groups)
    closed_of = {(p.charge_point_id, p.evse_id): p.closed for p in ports}
    cut = await _cutoffs(db, ports, lo, hi)
    first, last = ceil_bucket(lo), floor_bucket(hi)
    keys = [(p.charge_point_id, p.evse_id) for p in ports]
    # Roll-up part of each port: [first, min(cut, last)).
    rolled_to = {k: max(first, min(cut[k], last)) for k in keys}
    cps, evses = [k[0] for k in keys], [k[1] for k in keys]
    lower = list(bounds[:-1])
    closed_rows = [(c, group_of[hours]) for hours in groups for c in hours]
    ranges, days = rolled_ranges(ports, first, rolled_to, bounds, zone)
    for r in await db.fetch(
            _ROLLED_SQL, [x[0] for x in ranges], [x[1] for x in ranges], [x[2] for x in ranges],
            [x[3] for x in ranges], [group_of[closed_of[(x[0], x[1])]] for x in ranges],
            [c[0][0] for c in closed_rows], [c[0][1] for c in closed_rows], [c[1] for c in closed_rows],
            [d[0] for d in days], [d[1] for d in days], [d[2] for d in days], [d[3] for d in days],
            lower, zone.key if zone else "UTC"):
        if 1 <= r["i"] <= len(out):
            out[r["i"] - 1].occupied_s += r["occ"]
            out[r["i"] - 1].charging_s += r["chg"]
            out[r["i"] - 1].energy_kwh += r["wh"] / 1000
    # Raw part: the head [lo, first) and the tail [rolled_to, hi).
    raw_ended: list[datetime] = []
    raw_idle: list[float] = []
    span_cut = {k: min(cut[k], rolled_to[k]) for k in keys}   # roll-up spans before, raw ones after
    segments = [(k, (lo, min(first, hi))) for k in keys if lo < first] + \
               [(k, (rolled_to[k], hi)) for k in keys if rolled_to[k] < hi]
    for part in (segments[i:i + 200] for i in range(0, len(segments), 200)):
        for (key, window), history in zip(part, await _histories(db, part), strict=True):
            minutes = port_minutes(history, window)
            add_port_minutes(out, lower, minutes, closed_of[key])
            for span in minutes.spans:
                if span.post_charge_idle_s is not None and span.ended_at >= span_cut[key]:
                    raw_ended.append(span.ended_at)
                    raw_idle.append(span.post_charge_idle_s)
    total = BucketUsage(lo, hi, ports=len(ports))
    span_rows = []
    if with_idle:
        async with db.acquire() as conn, conn.transaction():
            # Percentiles sort every span of the window: give the sort memory rather than disk.
            await conn.execute(f"SET LOCAL work_mem = '{PERCENTILE_WORK_MEM_MB}MB'")
            span_rows = await conn.fetch(_SPANS_SQL, cps, evses, [span_cut[k] for k in keys], lo, lower, raw_ended,
                                         raw_idle, hi)
    for r in span_rows:
        target = total if r["i"] is None else out[r["i"] - 1] if 1 <= r["i"] <= len(out) else None
        if target is not None:
            target.median_idle_s, target.p90_idle_s = r["p50"], r["p90"]
    tx_ranges = session_ranges(ports, lo, hi, days, zone)
    for r in await db.fetch(_SESSIONS_SQL, [x[0] for x in tx_ranges], [x[1] for x in tx_ranges],
                            [x[2] for x in tx_ranges], [x[3] for x in tx_ranges], [d[0] for d in days],
                            [d[1] for d in days], [d[2] for d in days], [d[3] for d in days], MIN_SUCCESS_WH,
                            sorted(FAILED_STOP_REASONS), lower, zone.key if zone else "UTC"):
        target = total if r["i"] is None else out[r["i"] - 1] if 1 <= r["i"] <= len(out) else None
        if target is not None:
            target.sessions, target.successes = r["n"], r["ok"]
    if with_peak:
        await _peaks(db, cps, evses, out)
        total.peak_concurrency = max((b.peak_concurrency or 0) for b in out)
    add_totals(total, out)
    return out, total


async def _histories(db: asyncpg.Pool, segments: list[tuple[tuple[str, int], Interval]]) -> list[PortHistory]:
    by_until: dict[datetime, list[tuple[str, int, datetime]]] = {}
    for (cp, evse), (start, end) in segments:
        by_until.setdefault(end, []).append((cp, evse, start))
    loaded = {}
    for until, group in by_until.items():
        for key, history in (await load_histories(db, group, until)).items():
            loaded[(key, until)] = history
    return [loaded[(key, window[1])] for key, window in segments]



async def _peaks(db: asyncpg.Pool, cps: list[str], evses: list[int], out: list[BucketUsage]) -> None:
    """Most ports in a session at once, per bucket (sessions: start → stop, open ones to the end)."""
    lo, hi = out[0].start, out[-1].end
    rows = await db.fetch(
        """SELECT t.started_at, COALESCE(t.stopped_at, $4) AS stopped_at FROM transactions t
           JOIN unnest($1::text[], $2::int[]) AS v(cp, evse) ON t.charge_point_id = v.cp AND t.evse_id = v.evse
           WHERE t.started_at < $4 AND COALESCE(t.stopped_at, $4) > $3
             AND t.started_at > $3 - interval '7 days'""", cps, evses, lo, hi)
    add_peak_concurrency(out, [(r["started_at"], r["stopped_at"]) for r in rows])


# Energy of each port over its quarter-hour ranges and whole days of the roll-up; $7 the zone, $8/$9
# the solar hours (local wall clock of a quarter hour's start).
_PERIOD_ENERGY_SQL = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[]) AS v(cp, evse, lo, hi)),
dv AS (SELECT * FROM unnest($5::text[], $6::int[], $10::date[], $11::date[]) AS dv(cp, evse, lo, hi)),
q AS (
    SELECT v.cp, v.evse, r.energy_wh AS wh,
           CASE WHEN (r.bucket AT TIME ZONE $7)::time >= $8::time AND (r.bucket AT TIME ZONE $7)::time < $9::time
                THEN r.energy_wh ELSE 0 END AS solar
    FROM v CROSS JOIN LATERAL (
        SELECT x.bucket, x.energy_wh FROM port_state_15m x
        WHERE x.charge_point_id = v.cp AND x.evse_id = v.evse AND x.bucket >= v.lo AND x.bucket < v.hi
          AND x.energy_wh <> 0 OFFSET 0) r
    UNION ALL
    SELECT d.charge_point_id, d.evse_id, d.energy_wh, d.energy_solar_wh
    FROM port_state_day d JOIN dv ON d.charge_point_id = dv.cp AND d.evse_id = dv.evse
    WHERE d.day >= dv.lo AND d.day < dv.hi AND d.time_zone = $7)
SELECT cp, evse, sum(wh) AS wh, sum(solar) AS solar FROM q GROUP BY 1, 2
"""

_PERIOD_SESSIONS_SQL = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[]) AS v(cp, evse, lo, hi)),
dv AS (SELECT * FROM unnest($5::text[], $6::int[], $7::date[], $8::date[]) AS dv(cp, evse, lo, hi)),
q AS (
    SELECT v.cp, v.evse, 1 AS n
    FROM v CROSS JOIN LATERAL (
        SELECT 1 FROM transactions x
        WHERE x.charge_point_id = v.cp AND x.evse_id = v.evse AND x.started_at >= v.lo AND x.started_at < v.hi
        OFFSET 0) t
    UNION ALL
    SELECT d.charge_point_id, d.evse_id, d.sessions
    FROM port_state_day d JOIN dv ON d.charge_point_id = dv.cp AND d.evse_id = dv.evse
    WHERE d.day >= dv.lo AND d.day < dv.hi AND d.time_zone = $9)
SELECT cp, evse, sum(n)::int AS n FROM q GROUP BY 1, 2
"""

_CARRIED_IN_SQL = """
SELECT v.cp, v.evse, count(*)::int AS n
FROM unnest($1::text[], $2::int[]) AS v(cp, evse) CROSS JOIN LATERAL (
    SELECT 1 FROM transactions t
    WHERE t.charge_point_id = v.cp AND t.evse_id = v.evse AND t.started_at >= $3::timestamptz - $4::interval
      AND t.started_at < $3 AND (t.stopped_at IS NULL OR t.stopped_at > $3)
    OFFSET 0) t
GROUP BY 1, 2
"""


async def period_energy(db: asyncpg.Pool, ports: Sequence[PortRef], period: Interval,
                        zone: ZoneInfo) -> dict[tuple[str, int], PeriodEnergy]:
    """Per port of ``zone``: the energy that flowed in ``period`` (bounds on quarter hours, e.g.
    local midnights), split into solar hours and the rest, by the same rule and from the same
    roll-up as the utilization figures; and the sessions started in it / carried into it."""
    lo, hi = period
    refs = [PortRef(p.charge_point_id, p.evse_id, p.rated_kw, (), zone.key) for p in ports]
    out = {(p.charge_point_id, p.evse_id): PeriodEnergy() for p in refs}
    if not refs:
        return out
    cut = await _cutoffs(db, refs, lo, hi)
    first, last = ceil_bucket(lo), floor_bucket(hi)
    keys = list(out)
    rolled_to = {k: max(first, min(cut[k], last)) for k in keys}
    ranges, days = rolled_ranges(refs, first, rolled_to, [lo, hi], zone)
    solar = list(SOLAR_HOURS)
    for r in await db.fetch(_PERIOD_ENERGY_SQL, [x[0] for x in ranges], [x[1] for x in ranges],
                            [x[2] for x in ranges], [x[3] for x in ranges], [d[0] for d in days],
                            [d[1] for d in days], zone.key, *solar, [d[2] for d in days], [d[3] for d in days]):
        figures = out[(r["cp"], r["evse"])]
        figures.solar_wh += r["solar"]
        figures.other_wh += r["wh"] - r["solar"]
    segments = [(k, (lo, min(first, hi))) for k in keys if lo < first] + \
               [(k, (rolled_to[k], hi)) for k in keys if rolled_to[k] < hi]
    for part in (segments[i:i + 200] for i in range(0, len(segments), 200)):
        for (key, window), history in zip(part, await _histories(db, part), strict=True):
            figures = out[key]
            for start, wh in session_energy(history.sessions, window).items():
                local = start.astimezone(zone).time()
                if solar[0] <= local < solar[1]:
                    figures.solar_wh += wh
                else:
                    figures.other_wh += wh
    tx_ranges = session_ranges(refs, lo, hi, days, zone)
    for r in await db.fetch(_PERIOD_SESSIONS_SQL, [x[0] for x in tx_ranges], [x[1] for x in tx_ranges],
                            [x[2] for x in tx_ranges], [x[3] for x in tx_ranges], [d[0] for d in days],
                            [d[1] for d in days], [d[2] for d in days], [d[3] for d in days], zone.key):
        out[(r["cp"], r["evse"])].sessions = r["n"]
    for r in await db.fetch(_CARRIED_IN_SQL, [k[0] for k in keys], [k[1] for k in keys], lo, CARRIED_IN_LOOKBACK):
        out[(r["cp"], r["evse"])].carried_in = r["n"]
    return out
