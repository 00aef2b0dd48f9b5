"""Port uptime: outages from status and connectivity, exclusions, NEVI / generic / UK formulas.

Outage (reporting.md §5.4): a port is out for every minute where (a) its OCPP status, or its
charge point's connector-0 status, is Faulted or Unavailable (OCPI OUTOFORDER/INOPERATIVE), or
(b) the charge point is offline for longer than ``offline_grace`` (only the minutes past the
grace count). Minutes before the first thing we know about the port are *unknown*: neither up
nor out; they lower ``data_completeness``.

NEVI (23 CFR 680.116(b)(3)): μ = ((525,600 − (T_outage − T_excluded)) / 525,600) × 100 over the
12 months ending with the report month; T_excluded = outage minutes with a recorded exclusion
(reasons outside the operator's control) or outside the station's access hours. The
denominator is fixed at 525,600 even in a leap year, as the rule says; the real minute count
is reported next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from csms.reporting import round2
from schemas.intervals import Interval, intersect, merge, minutes, subtract

NEVI_MINUTES = 525_600
DOWN_STATUSES = frozenset({"Faulted", "Unavailable"})
# EV-ChART Module 4 excluded_outage_reason codes 1–6 (order as in reporting.md §1.1; assumed).
EXCLUSION_REASONS = {"utility_interruption": 1, "vehicle_fault": 2, "scheduled_maintenance": 3, "vandalism": 4,
                     "natural_disaster": 5, "outside_hours": 6}


@dataclass(frozen=True, slots=True)
class StatusChange:
    time: datetime
    status: str
    error_code: str = ""


@dataclass(frozen=True, slots=True)
class Outage:
    start: datetime
    end: datetime
    detection: str          # "status" or "offline"
    cause: str = ""         # OCPP status and error code, or the disconnect reason

    @property
    def minutes(self) -> float:
        return (self.end - self.start).total_seconds() / 60.0


@dataclass(frozen=True, slots=True)
class Exclusion:
    start: datetime
    end: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class PortTimeline:
    """What is known about one port: its statuses, its charger's connector-0 statuses, connectivity."""

    port_status: Sequence[StatusChange]
    charger_status: Sequence[StatusChange] = ()
    connectivity: Sequence[tuple[datetime, str]] = ()   # (time, "connected" | "disconnected")


def _runs(changes: Sequence[StatusChange], until: datetime) -> list[tuple[Interval, StatusChange]]:
    ordered = sorted(changes, key=lambda c: c.time)
    if not ordered:
        return []
    out = []
    for change, nxt in zip(ordered, [*ordered[1:], None], strict=True):
        end = nxt.time if nxt is not None else until
        if end > change.time:
            out.append(((change.time, end), change))
    return out


def offline_intervals(connectivity: Sequence[tuple[datetime, str]], until: datetime,
                      grace: timedelta) -> list[Interval]:
    """Disconnected periods, minus their first ``grace``."""
    out: list[Interval] = []
    down_since: datetime | None = None
    for moment, event in sorted(connectivity):
        if event == "disconnected" and down_since is None:
            down_since = moment
        elif event == "connected" and down_since is not None:
            if moment - down_since > grace:
                out.append((down_since + grace, moment))
            down_since = None
    if down_since is not None and until - down_since > grace:
        out.append((down_since + grace, until))
    return out


def outages(timeline: PortTimeline, window: Interval, *, offline_grace: timedelta = timedelta(0),
            offline_counts: bool = True) -> list[Outage]:
    """Outage intervals of a port inside ``window`` (overlapping causes are reported once, status first)."""
    found: list[Outage] = []
    for changes in (timeline.port_status, timeline.charger_status):
        for (start, end), change in _runs(changes, window[1]):
            if change.status in DOWN_STATUSES:
                for s, e in intersect([(start, end)], [window]):
                    found.append(Outage(s, e, "status", f"{change.status} {change.error_code}".strip()))
    status_spans = merge((o.start, o.end) for o in found)
    if offline_counts:
        offline = intersect(offline_intervals(timeline.connectivity, window[1], offline_grace), [window])
        for s, e in subtract(offline, status_spans):
            found.append(Outage(s, e, "offline", "charge point offline"))
    return sorted(found, key=lambda o: o.start)


def known_since(timeline: PortTimeline) -> datetime | None:
    moments = [c.time for c in timeline.port_status] + [c.time for c in timeline.charger_status] + \
        [t for t, _ in timeline.connectivity]
    return min(moments) if moments else None


@dataclass
class UptimeResult:
    method: str
    period_start: datetime
    period_end: datetime
    minutes_in_period: float
    denominator_minutes: float
    t_outage_min: float
    t_excluded_min: float
    uptime_pct: float | None
    eligible: bool
    pro_rata_uptime_pct: float | None
    data_completeness: float
    excluded_by_reason: dict[str, float] = field(default_factory=dict)
    outages: list[Outage] = field(default_factory=list)

    @property
    def meets_requirement(self) -> bool | None:
        # NEVI: "greater than 97 %" (680.116(b)); UK: at least 99 % (PCPR reg. 7).
        if self.uptime_pct is None:
            return None
        return self.uptime_pct >= 99.0 if self.method == "uk" else self.uptime_pct > 97.0


def excluded_minutes(outage_spans: list[Interval], exclusions: Sequence[Exclusion],
                     opening: list[Interval], window: Interval) -> tuple[float, dict[str, float]]:
    """T_excluded: outage minutes covered by an exclusion or outside access hours (no double counting)."""
    by_reason: dict[str, float] = {}
    covered: list[Interval] = []
    closed = subtract([window], opening)
    outside = intersect(outage_spans, closed)
    if outside:
        by_reason["outside_hours"] = minutes(outside)
        covered.extend(outside)
    for exclusion in exclusions:
        part = subtract(intersect(outage_spans, [(exclusion.start, exclusion.end)]), covered)
        if part:
            by_reason[exclusion.reason] = by_reason.get(exclusion.reason, 0.0) + minutes(part)
            covered.extend(part)
    return minutes(covered), by_reason


def uptime(*, method: str, timeline: PortTimeline, window: Interval, opening: list[Interval],
           exclusions: Sequence[Exclusion] = (), operational_since: datetime | None = None,
           offline_grace: timedelta = timedelta(0), offline_counts: bool = True) -> UptimeResult:
    """One port's uptime over ``window`` by ``method`` ('nevi', 'generic' or 'uk')."""
    period_min = (window[1] - window[0]).total_seconds() / 60.0
    start_known = known_since(timeline)
    known = [] if start_known is None else intersect([(max(start_known, window[0]), window[1])], [window])
    completeness = round(minutes(known) / period_min, 4) if period_min else 0.0
    if method == "uk":
        # UK reg. 7: only INOPERATIVE/OUTOFORDER within access hours count; UNKNOWN (offline) is reliable.
        outs = outages(timeline, window, offline_grace=offline_grace, offline_counts=False)
        spans = intersect(merge((o.start, o.end) for o in outs), opening)
        op_min = minutes(opening)
        value = round2((1 - minutes(spans) / op_min) * 100) if op_min and known else None
        return UptimeResult("uk", window[0], window[1], period_min, op_min, minutes(spans), 0.0, value,
                            True, value, completeness, {}, outs)
    outs = outages(timeline, window, offline_grace=offline_grace, offline_counts=offline_counts)
    spans = merge((o.start, o.end) for o in outs)
    t_out = minutes(spans)
    t_excl, by_reason = excluded_minutes(spans, exclusions, opening, window)
    denominator = float(NEVI_MINUTES) if method == "nevi" else period_min
    eligible = method != "nevi" or (operational_since is not None and operational_since <= window[0])
    value = round2((denominator - (t_out - t_excl)) / denominator * 100) if known else None
    # A port younger than the window: the same formula over the part it has existed (pro rata).
    since = max(window[0], operational_since or window[0], start_known or window[0])
    live_min = (window[1] - since).total_seconds() / 60.0
    pro_rata = None
    if known and live_min > 0:
        live_spans = intersect(spans, [(since, window[1])])
        live_excl, _ = excluded_minutes(live_spans, exclusions, opening, (since, window[1]))
        pro_rata = round2((live_min - (minutes(live_spans) - live_excl)) / live_min * 100)
    return UptimeResult(method, window[0], window[1], period_min, denominator, round2(t_out), round2(t_excl),
                        value if eligible else None, eligible, pro_rata, completeness,
                        {k: round2(v) for k, v in by_reason.items()}, outs)


def nevi_window(report_month: str, time_zone: str) -> Interval:
    """The 12 months ending with ``report_month`` (YYYY-MM), in station-local time (reporting.md §5.4)."""
    year, month = (int(x) for x in report_month.split("-"))
    if not 1 <= month <= 12:
        raise ValueError("report_month must be YYYY-MM")
    zone = ZoneInfo(time_zone)
    end_year, end_month = (year + 1, 1) if month == 12 else (year, month + 1)
    start_year, start_month = (year - 1, month + 1) if month < 12 else (year, 1)
    start = datetime(start_year, start_month, 1, tzinfo=zone).astimezone(UTC)
    end = datetime(end_year, end_month, 1, tzinfo=zone).astimezone(UTC)
    return start, end
