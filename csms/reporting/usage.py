"""Utilization arithmetic per report bucket: available time and capacity under access hours,
the raw remainder's minutes and energy, peak concurrency, and the figures a bucket is shown as.

The figures come from the roll-up (``port_state_15m``, ``port_state_day``, ``port_occupancy_spans``;
kept by ingest/rollup.py) up to each port's cut-off and from the raw rows after it, computed by
the same functions the roll-up uses (``schemas.port_state``): a report never waits for the roll-up
and never differs from it. Reading both: ``csms.store.report_usage``.

Energy is the energy that flowed in each bucket (``schemas.port_state.session_energy``: register
samples interpolated linearly, meterStart/meterStop as end points, untrusted samples left out),
not the energy of the sessions that started in it; it is not limited to access hours (energy
delivered is energy delivered). Sessions and successes are counted by their start.

Report buckets are given as UTC boundaries (local midnights, local hours … computed by the
caller in the station's zone); every boundary is on a quarter hour, so each roll-up bucket
falls in exactly one report bucket. Access hours are applied per quarter hour: a quarter
hour counts as open when it starts inside the station's hours (exact for hours on quarter
hours, which is what OCPI hours are in practice).

Figures (reporting.md §5.4): Occ = Σ |plug(s) ∩ Op|, Chg = Σ |chg(s) ∩ Op|, Idle = Occ − Chg, each
÷ Σ_p |Op(p)|; CF = Σ E(s, W) ÷ Σ_p (P_rated(p) × |Op(p)|). Network figures are recomputed from
minutes and kWh, never averaged from station percentages.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from csms.reporting import round2
from schemas.intervals import Interval, subtract
from schemas.port_state import PortMinutes, ceil_bucket

PortKey = tuple[str, int]


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


def is_closed(closed: Sequence[Interval], moment: datetime) -> bool:
    i = bisect.bisect_right(closed, (moment, _LATEST)) - 1   # the last closed interval starting ≤ moment
    return i >= 0 and closed[i][0] <= moment < closed[i][1]


def closed_quarters(closed: Sequence[Interval]) -> list[Interval]:
    """The quarter hours a port is closed in, as time: those whose start lies in a closed
    interval, i.e. [ceil(s), ceil(e)) for each (disjoint, sorted) closed interval."""
    return [(ceil_bucket(s), ceil_bucket(e)) for s, e in closed if ceil_bucket(e) > ceil_bucket(s)]


def open_seconds(shut: Sequence[Interval], span: Interval) -> float:
    """Seconds of ``span`` in quarter hours that start in access hours (``shut``: closed_quarters)."""
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


def whole_days(p: PortRef, first: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[date, date]]:
    """Runs of station-local days inside [first, end) with no closed quarter hour (days hold all 24 hours)."""
    out = []
    for g0, g1 in subtract([(first, end)], closed_quarters(p.closed)):
        day_lo = (g0 - timedelta(microseconds=1)).astimezone(zone).date() + timedelta(days=1)
        day_hi = g1.astimezone(zone).date()
        if day_lo < day_hi:
            out.append((day_lo, day_hi))
    return out


def midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def rolled_ranges(ports: Sequence[PortRef], first: datetime, rolled_to: dict[tuple[str, int], datetime],
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
        runs = whole_days(p, first, end, zone) if by_days and zone is not None and p.time_zone == zone.key else []
        for day_lo, day_hi in runs:
            days.append((p.charge_point_id, p.evse_id, day_lo, day_hi))
        covered = [(midnight(lo, zone), midnight(hi, zone)) for lo, hi in runs] if zone is not None else []
        ranges.extend((p.charge_point_id, p.evse_id, s, e) for s, e in subtract([(first, end)], covered))
    return ranges, days


def session_ranges(ports: Sequence[PortRef], lo: datetime, hi: datetime,
                    days: Sequence[tuple[str, int, date, date]], zone: ZoneInfo | None,
                    ) -> list[tuple[str, int, datetime, datetime]]:
    """The window minus each port's whole days (whose sessions the roll-up has counted)."""
    by_port: dict[tuple[str, int], list[Interval]] = {}
    for cp, evse, day_lo, day_hi in days:
        if zone is not None:
            by_port.setdefault((cp, evse), []).append((midnight(day_lo, zone), midnight(day_hi, zone)))
    out: list[tuple[str, int, datetime, datetime]] = []
    for p in ports:
        key = (p.charge_point_id, p.evse_id)
        out.extend((*key, s, e) for s, e in subtract([(lo, hi)], by_port.get(key, [])))
    return out


@dataclass(slots=True)
class PeriodEnergy:
    """One port's energy inside a period, split at ``schemas.port_state.SOLAR_HOURS``, and its sessions."""

    solar_wh: float = 0.0
    other_wh: float = 0.0
    sessions: int = 0            # started in the period
    carried_in: int = 0          # started before it (at most CARRIED_IN_LOOKBACK), still running at its start


def closed_groups(ports: Sequence[PortRef]) -> dict[tuple[Interval, ...], list[PortRef]]:
    """The ports grouped by their closed hours (a station's ports share them)."""
    groups: dict[tuple[Interval, ...], list[PortRef]] = {}
    for port in ports:
        groups.setdefault(port.closed, []).append(port)
    return groups


def add_available(out: Sequence[BucketUsage], groups: dict[tuple[Interval, ...], list[PortRef]]) -> None:
    """Available seconds and capacity (kWh at rated power) of each bucket: its quarter hours that
    start in access hours, per port."""
    for closed_hours, members in groups.items():
        rated = sum(p.rated_kw for p in members)
        shut = closed_quarters(closed_hours)
        for b in out:
            open_s = open_seconds(shut, (b.start, b.end))
            b.avail_s += open_s * len(members)
            b.capacity_kwh += rated * open_s / 3600.0


def add_port_minutes(out: Sequence[BucketUsage], lower: Sequence[datetime], minutes: PortMinutes,
                     closed: Sequence[Interval]) -> None:
    """One port's minutes and energy of the raw part (``schemas.port_state.port_minutes``) into the
    report buckets whose starts are ``lower``: occupied and charging time only in quarter hours that
    start in access hours, energy whenever it flowed."""
    for start, (occ, chg) in minutes.buckets.items():
        i = bisect.bisect_right(lower, start) - 1
        if 0 <= i < len(out) and not is_closed(closed, start):
            out[i].occupied_s += occ
            out[i].charging_s += chg
    for start, wh in minutes.energy.items():
        i = bisect.bisect_right(lower, start) - 1
        if 0 <= i < len(out):
            out[i].energy_kwh += wh / 1000


def add_peak_concurrency(out: Sequence[BucketUsage], sessions: Sequence[tuple[datetime, datetime]]) -> None:
    """Most ports in a session at once, per bucket (sessions: start → stop, open ones to the end)."""
    lo = out[0].start
    # At equal times an end (−1) sorts before a start (+1): back-to-back sessions are not concurrent.
    events = sorted([(max(start, lo), 1) for start, _ in sessions] + [(stop, -1) for _, stop in sessions])
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


def add_totals(total: BucketUsage, out: Sequence[BucketUsage]) -> None:
    """The window's minutes, capacity and energy: the buckets' sums."""
    for b in out:
        total.avail_s += b.avail_s
        total.capacity_kwh += b.capacity_kwh
        total.occupied_s += b.occupied_s
        total.charging_s += b.charging_s
        total.energy_kwh += b.energy_kwh


def percent(part: float, whole: float) -> float | None:
    return round2(part / whole * 100) if whole > 0 else None


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round2(seconds / 60)


def bucket_figures(b: BucketUsage) -> dict[str, Any]:
    """A bucket's figures as the API gives them (after its bounds): minutes, percentages of the
    available minutes, capacity factor, per-port-day rates, success rate, idle percentiles."""
    occupied, charging = b.occupied_s / 60, b.charging_s / 60
    idle = max(0.0, occupied - charging)
    avail = b.avail_s / 60
    port_days = b.ports * (b.end - b.start).total_seconds() / 86400
    return {
        "ports": b.ports, "avail_min": round2(avail),
        "occupied_min": round2(occupied), "charging_min": round2(charging), "idle_min": round2(idle),
        "u_occupied_pct": percent(occupied, avail), "u_charging_pct": percent(charging, avail),
        "u_idle_pct": percent(idle, avail), "energy_kwh": round(b.energy_kwh, 3),
        "capacity_factor_pct": percent(b.energy_kwh, b.capacity_kwh), "sessions": b.sessions,
        "sessions_per_port_day": round(b.sessions / port_days, 3) if port_days else None,
        "kwh_per_port_day": round(b.energy_kwh / port_days, 3) if port_days else None,
        "success_rate_pct": percent(b.successes, b.sessions),
        "median_post_charge_idle_min": _minutes(b.median_idle_s), "p90_post_charge_idle_min": _minutes(b.p90_idle_s),
        "peak_concurrency": b.peak_concurrency,
    }
