"""Utilization figures per report bucket, from the 15-minute roll-up plus what it lacks yet.

The roll-up (``port_state_15m``, ``port_occupancy_spans``; kept by ingest/rollup.py) is
complete before its watermark, except for ports marked dirty since some time. For each port
the figures come from the roll-up up to that port's cut-off, and from the raw rows after it
(and for the part of a window that starts or ends inside a quarter hour), computed by the
same functions the roll-up uses (``schemas.port_state``): a report never waits for the
roll-up and never differs from it.

Energy is the energy that flowed in each bucket (``schemas.port_state.session_energy``: register
samples interpolated linearly, meterStart/meterStop as end points, untrusted samples left out),
not the energy of the sessions that started in it; it is not limited to access hours (energy
delivered is energy delivered). Sessions and successes are counted by their start.

Report buckets are given as UTC boundaries (local midnights, local hours … computed by the
caller in the station's zone); every boundary is on a quarter hour, so each roll-up bucket
falls in exactly one report bucket. Access hours are applied per quarter hour: a quarter
hour counts as open when it starts inside the station's hours (exact for hours on quarter
hours, which is what OCPI hours are in practice).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from csms.reporting.energy_statement import CARRIED_IN_LOOKBACK
from schemas.intervals import Interval, subtract
from schemas.port_state import (
    EARLIEST,
    FAILED_STOP_REASONS,
    MIN_SUCCESS_WH,
    SOLAR_HOURS,
    PortHistory,
    ceil_bucket,
    floor_bucket,
    load_histories,
    port_minutes,
    session_energy,
    settled_cuts,
)


@dataclass(frozen=True, slots=True)
class PortRef:
    charge_point_id: str
    evse_id: int
    rated_kw: float
    closed: tuple[Interval, ...] = ()     # the station's closed hours inside the window
    time_zone: str = "UTC"                # the station's


@dataclass(slots=True)
class BucketUsage:
    start: datetime
    end: datetime
    ports: int = 0
    avail_s: float = 0.0
    occupied_s: float = 0.0
    charging_s: float = 0.0
    capacity_kwh: float = 0.0
    energy_kwh: float = 0.0
    sessions: int = 0
    successes: int = 0
    median_idle_s: float | None = None
    p90_idle_s: float | None = None
    peak_concurrency: int | None = None


_LATEST = datetime.max.replace(tzinfo=UTC)
PERCENTILE_WORK_MEM_MB = 64


def _is_closed(closed: Sequence[Interval], moment: datetime) -> bool:
    i = bisect.bisect_right(closed, (moment, _LATEST)) - 1   # the last closed interval starting ≤ moment
    return i >= 0 and closed[i][0] <= moment < closed[i][1]


def _closed_quarters(closed: Sequence[Interval]) -> list[Interval]:
    """The quarter hours a port is closed in, as time: those whose start lies in a closed
    interval, i.e. [ceil(s), ceil(e)) for each (disjoint, sorted) closed interval."""
    return [(ceil_bucket(s), ceil_bucket(e)) for s, e in closed if ceil_bucket(e) > ceil_bucket(s)]


def _open_seconds(shut: Sequence[Interval], span: Interval) -> float:
    """Seconds of ``span`` in quarter hours that start in access hours (``shut``: _closed_quarters)."""
    total = (span[1] - span[0]).total_seconds()
    if not shut or shut[-1][1] <= span[0] or shut[0][0] >= span[1]:
        return total
    i = max(0, bisect.bisect_right(shut, (span[0], _LATEST)) - 1)
    while i < len(shut) and shut[i][0] < span[1]:   # bounded by the closed intervals inside the span
        lo, hi = max(shut[i][0], span[0]), min(shut[i][1], span[1])
        if hi > lo:
            total -= (hi - lo).total_seconds()
        i += 1
    return total


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


def _whole_days(p: PortRef, first: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[date, date]]:
    """Runs of station-local days inside [first, end) with no closed quarter hour (days hold all 24 hours)."""
    out = []
    for g0, g1 in subtract([(first, end)], _closed_quarters(p.closed)):
        day_lo = (g0 - timedelta(microseconds=1)).astimezone(zone).date() + timedelta(days=1)
        day_hi = g1.astimezone(zone).date()
        if day_lo < day_hi:
            out.append((day_lo, day_hi))
    return out


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def _rolled_ranges(ports: Sequence[PortRef], first: datetime, rolled_to: dict[tuple[str, int], datetime],
                   bounds: Sequence[datetime], zone: ZoneInfo | None,
                   ) -> tuple[list[tuple[str, int, datetime, datetime]], list[tuple[str, int, date, date]]]:
    """Quarter-hour ranges and whole-day ranges that together cover each port's roll-up part.
    Whole days serve only where every report boundary is a local midnight of the port's zone,
    for the days in which the port has no closed quarter hour."""
    by_days = zone is not None and all(b.astimezone(zone).time() == time(0) for b in bounds[1:-1])
    ranges: list[tuple[str, int, datetime, datetime]] = []
    days: list[tuple[str, int, date, date]] = []
    for p in ports:
        end = rolled_to[(p.charge_point_id, p.evse_id)]
        if end <= first:
            continue
        runs = _whole_days(p, first, end, zone) if by_days and zone is not None and p.time_zone == zone.key else []
        for day_lo, day_hi in runs:
            days.append((p.charge_point_id, p.evse_id, day_lo, day_hi))
        covered = [(_midnight(lo, zone), _midnight(hi, zone)) for lo, hi in runs] if zone is not None else []
        ranges.extend((p.charge_point_id, p.evse_id, s, e) for s, e in subtract([(first, end)], covered))
    return ranges, days


def _session_ranges(ports: Sequence[PortRef], lo: datetime, hi: datetime,
                    days: Sequence[tuple[str, int, date, date]], zone: ZoneInfo | None,
                    ) -> list[tuple[str, int, datetime, datetime]]:
    """The window minus each port's whole days (whose sessions the roll-up has counted)."""
    by_port: dict[tuple[str, int], list[Interval]] = {}
    for cp, evse, day_lo, day_hi in days:
        if zone is not None:
            by_port.setdefault((cp, evse), []).append((_midnight(day_lo, zone), _midnight(day_hi, zone)))
    out: list[tuple[str, int, datetime, datetime]] = []
    for p in ports:
        key = (p.charge_point_id, p.evse_id)
        out.extend((*key, s, e) for s, e in subtract([(lo, hi)], by_port.get(key, [])))
    return out


async def usage(db: asyncpg.Pool, ports: Sequence[PortRef], bounds: Sequence[datetime], *,
                with_peak: bool = False, with_idle: bool = True,
                zone: ZoneInfo | None = None) -> tuple[list[BucketUsage], BucketUsage]:
    """Figures per report bucket [bounds[i], bounds[i+1]) over ``ports``, and over the whole window.
    ``with_idle=False`` skips the post-charge idle percentiles (they sort every span)."""
    lo, hi = bounds[0], bounds[-1]
    out = [BucketUsage(s, e, ports=len(ports)) for s, e in itertools.pairwise(bounds)]
    if not ports:
        return out, BucketUsage(lo, hi)
    groups: dict[tuple[Interval, ...], list[PortRef]] = {}
    for port in ports:
        groups.setdefault(port.closed, []).append(port)
    group_of = {c: n for n, c in enumerate(groups)}
    for closed_hours, members in groups.items():
        rated = sum(p.rated_kw for p in members)
        shut = _closed_quarters(closed_hours)
        for b in out:
            open_s = _open_seconds(shut, (b.start, b.end))
            b.avail_s += open_s * len(members)
            b.capacity_kwh += rated * open_s / 3600.0
    closed_of = {(p.charge_point_id, p.evse_id): p.closed for p in ports}
    cut = await _cutoffs(db, ports, lo, hi)
    first, last = ceil_bucket(lo), floor_bucket(hi)
    keys = [(p.charge_point_id, p.evse_id) for p in ports]
    # Roll-up part of each port: [first, min(cut, last)).
    rolled_to = {k: max(first, min(cut[k], last)) for k in keys}
    cps, evses = [k[0] for k in keys], [k[1] for k in keys]
    lower = list(bounds[:-1])
    closed_rows = [(c, group_of[hours]) for hours in groups for c in hours]
    ranges, days = _rolled_ranges(ports, first, rolled_to, bounds, zone)
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
            for start, (occ, chg) in minutes.buckets.items():
                i = bisect.bisect_right(lower, start) - 1
                if 0 <= i < len(out) and not _is_closed(closed_of[key], start):
                    out[i].occupied_s += occ
                    out[i].charging_s += chg
            for start, wh in minutes.energy.items():
                i = bisect.bisect_right(lower, start) - 1
                if 0 <= i < len(out):
                    out[i].energy_kwh += wh / 1000
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
    tx_ranges = _session_ranges(ports, lo, hi, days, zone)
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
    for b in out:
        total.avail_s += b.avail_s
        total.capacity_kwh += b.capacity_kwh
        total.occupied_s += b.occupied_s
        total.charging_s += b.charging_s
        total.energy_kwh += b.energy_kwh
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
    # At equal times an end (−1) sorts before a start (+1): back-to-back sessions are not concurrent.
    events = sorted([(max(r["started_at"], lo), 1) for r in rows] + [(r["stopped_at"], -1) for r in rows])
    running = j = 0
    for b in out:
        while j < len(events) and events[j][0] < b.start:
            running += events[j][1]
            j += 1
        peak = running
        while j < len(events) and events[j][0] < b.end:
            running += events[j][1]
            j += 1
            peak = max(peak, running)
        b.peak_concurrency = peak


@dataclass(slots=True)
class PeriodEnergy:
    """One port's energy inside a period, split at ``schemas.port_state.SOLAR_HOURS``, and its sessions."""

    solar_wh: float = 0.0
    other_wh: float = 0.0
    sessions: int = 0            # started in the period
    carried_in: int = 0          # started before it (at most CARRIED_IN_LOOKBACK), still running at its start


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
    ranges, days = _rolled_ranges(refs, first, rolled_to, [lo, hi], zone)
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
    tx_ranges = _session_ranges(refs, lo, hi, days, zone)
    for r in await db.fetch(_PERIOD_SESSIONS_SQL, [x[0] for x in tx_ranges], [x[1] for x in tx_ranges],
                            [x[2] for x in tx_ranges], [x[3] for x in tx_ranges], [d[0] for d in days],
                            [d[1] for d in days], [d[2] for d in days], [d[3] for d in days], zone.key):
        out[(r["cp"], r["evse"])].sessions = r["n"]
    for r in await db.fetch(_CARRIED_IN_SQL, [k[0] for k in keys], [k[1] for k in keys], lo, CARRIED_IN_LOOKBACK):
        out[(r["cp"], r["evse"])].carried_in = r["n"]
    return out
