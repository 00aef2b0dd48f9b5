"""Uptime of many ports: the ports' details, one port's results over several windows, and the
aggregation over stations and the network.

Aggregates are recomputed from minutes, never averaged from percentages (reporting.md §5.4):
μ = (Σ D − Σ (T_outage − T_excluded)) / Σ D × 100 over the ports that have a figure — for NEVI
the eligible ones (operational ≥ 12 months) over a complete period with their state known
throughout; for generic D is the known minutes, for the UK method the known access-hours
minutes. The others are counted by the reason they have no figure. Reading the ports in
batches: ``csms.store.report_fleet``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from csms.reporting import round2
from csms.reporting.hours import opening_intervals
from csms.reporting.outages import PortTimeline, outages_over
from csms.reporting.uptime import Exclusion, UptimeResult, uptime
from schemas.intervals import Interval

PortKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PortInfo:
    charge_point_id: str
    evse_id: int
    time_zone: str
    opening_hours: dict[str, Any] | None
    operational_since: datetime | None
    operational_since_source: str = "port"   # "port", "location" or "registration"


@dataclass(frozen=True, slots=True)
class FleetPort:
    info: PortInfo
    station_id: str
    uid: str
    rated_kw: float

    @property
    def key(self) -> PortKey:
        return (self.info.charge_point_id, self.info.evse_id)


def computed_part(window: Interval, now: datetime | None) -> Interval:
    """The part of ``window`` that has happened: [start, min(end, now)), empty if it starts after now."""
    return window if now is None else (window[0], min(window[1], max(now, window[0])))


OpeningCache = dict[tuple[str, str, Interval], list[Interval]]


def port_uptime_windows(port: FleetPort, timeline: PortTimeline, exclusions: Sequence[Exclusion], method: str,
                        windows: Sequence[Interval], whole: Interval, *, now: datetime | None,
                        offline_grace: timedelta, offline_counts: bool, opening: OpeningCache,
                        ) -> list[tuple[UptimeResult, list[Exclusion]]]:
    """One port's uptime in each of ``windows`` from its timeline over ``whole`` (the span covering
    them all), with the exclusions applied in each. ``opening`` caches access hours by hours, zone
    and window (ports of a station share them)."""
    per_window = []
    # Several windows (module 3's three): the port's outages once over the span, clipped to each.
    found = (outages_over(timeline, method, whole, offline_grace=offline_grace, offline_counts=offline_counts)
             if len(windows) > 1 else None)
    for window in windows:
        sig = (json.dumps(port.info.opening_hours, sort_keys=True), port.info.time_zone, window)
        if sig not in opening:
            opening[sig] = opening_intervals(port.info.opening_hours, port.info.time_zone, window)
        applied = [e for e in exclusions if e.start < window[1] and e.end > window[0]]
        result = uptime(method=method, timeline=timeline, window=window, opening=opening[sig], exclusions=applied,
                        operational_since=port.info.operational_since,
                        operational_since_source=port.info.operational_since_source,
                        offline_grace=offline_grace, offline_counts=offline_counts, now=now, span_outages=found)
        per_window.append((result, applied))
    return per_window


def aggregate(results: Sequence[UptimeResult]) -> dict[str, object]:
    """Uptime of a group of ports, recomputed from their minutes: over the ports with a figure
    (NEVI: eligible, complete period, state known throughout), and pro rata over the minutes
    each port has existed. Verdicts only for complete periods."""
    counted = [r for r in results if r.uptime_pct is not None]
    denominator = sum(r.denominator_minutes for r in counted)
    lost = sum(r.t_outage_min - r.t_excluded_min for r in counted)
    period = sum(r.minutes_in_period for r in results)
    live = sum(r.live_minutes for r in results)
    live_lost = sum(r.live_lost_minutes for r in results)
    complete = all(r.complete for r in results)
    not_counted: dict[str, int] = {}
    for r in results:
        for reason in r.uptime_null_reasons:
            not_counted[reason.code] = not_counted.get(reason.code, 0) + 1
    until = [r.computed_until for r in results if r.computed_until is not None]
    value = round2((denominator - lost) / denominator * 100) if denominator else None
    body: dict[str, object] = {
        "ports": len(results), "ports_counted": len(counted),
        "ports_not_counted_by_reason": not_counted,
        "complete": complete,
        "computed_until": max(until) if until else None,
        "ports_meeting_requirement": sum(1 for r in counted if r.meets_requirement) if complete else None,
        "denominator_minutes": round2(denominator), "t_outage_min": round2(sum(r.t_outage_min for r in counted)),
        "t_excluded_min": round2(sum(r.t_excluded_min for r in counted)),
        "uptime_pct": value,
        "pro_rata_uptime_pct": round2((live - live_lost) / live * 100) if live else None,
        "data_completeness": round(sum(r.data_completeness * r.minutes_in_period for r in results) / period, 4)
        if period else 0.0,
    }
    if results and results[0].method == "uk":
        # PCPR reg. 7(2): the network, on average, reliable for 99 % of each calendar year.
        body["meets_requirement"] = None if not complete or value is None else value >= 99.0
    return body
