"""Port uptime: exclusions, NEVI / generic / UK formulas over a port's outages (``csms.reporting.outages``).

A port's outages are found by ``csms.reporting.outages`` (status, connector 0, connectivity).
Minutes before the first thing we know about the port are *unknown*: neither up nor out; they
lower ``data_completeness``. Minutes after "now" have not happened: a window reaching past now is
computed up to now and marked incomplete.

NEVI (23 CFR 680.116(b)(3)): μ = ((525,600 − (T_outage − T_excluded)) / 525,600) × 100 over the
12 months ending with the report month; T_excluded = outage minutes with a recorded exclusion
(reasons outside the operator's control) or outside the station's access hours. The
denominator is fixed at 525,600 even in a leap year, as the rule says; the real minute count
is reported next to it.

UK (PCPR 2023 reg. 7): R = 1 − |(INOPERATIVE ∪ OUTOFORDER) ∩ Op| / |Op| over the access hours
Op (reg. 7(5)); offline (OCPI UNKNOWN) counts as reliable (reg. 7(3)(b)). Reg. 7 allows no
other exclusion: a recorded ``outside_hours`` exclusion removes its span from Op, every other
recorded reason is reported but not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from csms.common.utc import utc_text
from csms.reporting import round2
from csms.reporting.outages import Outage, PortTimeline, clip_outages, known_since, outages
from schemas.intervals import Interval, intersect, merge, minutes, subtract

NEVI_MINUTES = 525_600
# EV-ChART Module 4 excluded_outage_reason codes 1–6 (order as in reporting.md §1.1; assumed).
EXCLUSION_REASONS = {"utility_interruption": 1, "vehicle_fault": 2, "scheduled_maintenance": 3, "vandalism": 4,
                     "natural_disaster": 5, "outside_hours": 6}
# PCPR 2023 reg. 7(5): reliability is assessed only within the hours a charge point can be
# accessed. Reg. 7 has no other exclusion (vandalism, grid loss … stay "not working").
UK_APPLIED_EXCLUSIONS = frozenset({"outside_hours"})

# Why a figure or a verdict is null (codes are stable; messages say the specifics).
PERIOD_NOT_STARTED = "period_not_started"
PERIOD_INCOMPLETE = "period_incomplete"
NO_DATA = "no_data"
STATE_UNKNOWN = "state_unknown"
OPERATIONAL_SINCE_UNKNOWN = "operational_since_unknown"
OPERATED_LESS_THAN_12_MONTHS = "operated_less_than_12_months"
NO_ACCESS_HOURS = "no_access_hours"


@dataclass(frozen=True, slots=True)
class Exclusion:
    start: datetime
    end: datetime
    reason: str
    notes: str = ""


@dataclass(frozen=True, slots=True)
class NullReason:
    code: str
    message: str


@dataclass
class UptimeResult:
    method: str
    period_start: datetime
    period_end: datetime
    minutes_in_period: float          # the requested window, real minutes
    denominator_minutes: float
    t_outage_min: float
    t_excluded_min: float
    uptime_pct: float | None
    eligible: bool
    pro_rata_uptime_pct: float | None
    data_completeness: float          # minutes with the port's state known ÷ minutes_in_period
    excluded_by_reason: dict[str, float] = field(default_factory=dict)
    outages: list[Outage] = field(default_factory=list)
    computed_until: datetime | None = None
    complete: bool = True
    minutes_known: float = 0.0
    meets_requirement: bool | None = None
    uptime_null_reasons: list[NullReason] = field(default_factory=list)
    verdict_null_reasons: list[NullReason] = field(default_factory=list)
    known_since: datetime | None = None
    # pro rata parts (minutes), for aggregation over ports
    live_minutes: float = 0.0
    live_lost_minutes: float = 0.0
    # UK: outage minutes inside access hours under a recorded exclusion reg. 7 does not allow
    exclusions_not_applied_min: dict[str, float] = field(default_factory=dict)


def _span_min(span: Interval) -> float:
    """``minutes([span])`` (no merge needed for one interval)."""
    return (span[1] - span[0]).total_seconds() / 60.0 if span[1] > span[0] else 0.0


def _merged_min(spans: Sequence[Interval]) -> float:
    """``minutes(spans)`` for spans already ``merge``d."""
    return sum((end - start).total_seconds() for start, end in spans) / 60.0


def excluded_minutes(outage_spans: list[Interval], exclusions: Sequence[Exclusion],
                     opening: list[Interval], window: Interval) -> tuple[float, dict[str, float]]:
    """T_excluded: outage minutes covered by an exclusion or outside access hours (no double counting)."""
    if not exclusions and list(opening) == [window]:
        return 0.0, {}          # open throughout, nothing recorded: nothing excluded
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


@dataclass(frozen=True, slots=True)
class OutageExclusion:
    excluded_min: float
    reason: str | None          # the reason covering most of the outage's excluded minutes
    notes: str                  # that exclusion's notes ("" for outside hours)


def outage_exclusion(outage: Outage, exclusions: Sequence[Exclusion], opening: list[Interval],
                     window: Interval) -> OutageExclusion:
    """The excluded part of one outage, by the same rule as T_excluded."""
    span = [(outage.start, outage.end)]
    excluded, by_reason = excluded_minutes(span, exclusions, opening, window)
    if not by_reason:
        return OutageExclusion(0.0, None, "")
    reason = max(by_reason, key=lambda r: (by_reason[r], r))
    notes = next((e.notes for e in exclusions if e.reason == reason and e.start < outage.end and e.end > outage.start),
                 "")
    return OutageExclusion(excluded, reason, notes)


def uptime(*, method: str, timeline: PortTimeline, window: Interval, opening: list[Interval],
           exclusions: Sequence[Exclusion] = (), operational_since: datetime | None = None,
           operational_since_source: str = "port", offline_grace: timedelta = timedelta(0),
           offline_counts: bool = True, now: datetime | None = None,
           span_outages: Sequence[Outage] | None = None) -> UptimeResult:
    """One port's uptime over ``window`` by ``method`` ('nevi', 'generic' or 'uk').

    ``now``: minutes from ``now`` on have not happened and are not computed (None: the window
    has ended). ``opening``: the access hours inside the window. ``span_outages``: the port's
    :func:`outages_over` a span containing the computed part of the window, with the same settings
    (clipped here rather than found again)."""
    period_min = _span_min(window)
    end = window[1] if now is None else min(window[1], max(now, window[0]))
    computed: Interval = (window[0], end)
    complete = end == window[1]
    start_known = known_since(timeline)
    known_from = window[0] if start_known is None else max(start_known, window[0])
    known = [] if start_known is None or end <= known_from else [(known_from, end)]
    known_min = _span_min(known[0]) if known else 0.0
    completeness = round(known_min / period_min, 4) if period_min else 0.0

    # Why a figure over the whole window cannot be given (period and data).
    period_reasons: list[NullReason] = []
    if not complete:
        if end == window[0]:
            period_reasons.append(NullReason(PERIOD_NOT_STARTED,
                                             f"the period starts at {utc_text(window[0])}, after now"))
        else:
            period_reasons.append(NullReason(PERIOD_INCOMPLETE, f"the period ends at {utc_text(window[1])}, after now: "
                                             f"computed until {utc_text(end)}"))
    data_reasons: list[NullReason] = []
    if end > window[0] and not known:
        data_reasons.append(NullReason(NO_DATA, "no status or connection of the port is recorded up to "
                                       f"{utc_text(end)}"))
    elif known and known[0][0] > window[0]:
        data_reasons.append(NullReason(STATE_UNKNOWN, f"the port's state is unknown before {utc_text(known[0][0])} "
                                       f"(its first data): {round2(_span_min((window[0], known[0][0])))} minutes"))
    opening_done = intersect(opening, [computed])

    if method == "uk":
        applied = [(e.start, e.end) for e in exclusions if e.reason in UK_APPLIED_EXCLUSIONS]
        op = subtract(intersect(opening_done, known), applied)
        outs = (clip_outages(span_outages, computed) if span_outages is not None
                else outages(timeline, computed, offline_grace=offline_grace, offline_counts=False))
        spans = intersect(merge((o.start, o.end) for o in outs), op)
        op_min = minutes(op)
        value = round2((1 - minutes(spans) / op_min) * 100) if op_min else None
        not_applied: dict[str, float] = {}
        for e in exclusions:
            if e.reason not in UK_APPLIED_EXCLUSIONS:
                part = minutes(intersect(spans, [(e.start, e.end)]))
                if part:
                    not_applied[e.reason] = round2(not_applied.get(e.reason, 0.0) + part)
        value_reasons: list[NullReason] = []
        if value is None:
            value_reasons = period_reasons if end == window[0] else [r for r in data_reasons if r.code == NO_DATA] or [
                NullReason(NO_ACCESS_HOURS, "no access hours of the port with a known state in the period")]
        verdict_reasons = value_reasons or period_reasons
        meets = None if verdict_reasons else value is not None and value >= 99.0   # reg. 7(2): "99%"
        return UptimeResult(
            "uk", window[0], window[1], period_min, op_min, round2(minutes(spans)), 0.0, value, True, value,
            completeness, {}, outs, end, complete, known_min, meets, value_reasons, verdict_reasons, start_known,
            op_min, minutes(spans), not_applied)

    outs = (clip_outages(span_outages, computed) if span_outages is not None
            else outages(timeline, computed, offline_grace=offline_grace, offline_counts=offline_counts))
    spans = merge((o.start, o.end) for o in outs)
    t_out = _merged_min(spans)
    t_excl, by_reason = excluded_minutes(spans, exclusions, opening_done, computed)
    # A port younger than the window: the same formula over the part it has existed (pro rata).
    since = max(window[0], operational_since or window[0], start_known or window[0])
    live_min = _span_min((since, end))
    pro_rata = live_lost = None
    if known and live_min > 0:
        live_spans = intersect(spans, [(since, end)])
        live_excl, _ = excluded_minutes(live_spans, exclusions, intersect(opening_done, [(since, end)]), (since, end))
        live_lost = minutes(live_spans) - live_excl
        pro_rata = round2((live_min - live_lost) / live_min * 100)
    if method == "nevi":
        denominator = float(NEVI_MINUTES)
        eligible = operational_since is not None and operational_since <= window[0]
        value_reasons = list(period_reasons)
        if operational_since is None:
            value_reasons.append(NullReason(OPERATIONAL_SINCE_UNKNOWN, "no operational_since is recorded for the port "
                                            "or its location"))
        elif not eligible:
            value_reasons.append(NullReason(OPERATED_LESS_THAN_12_MONTHS, _younger(operational_since,
                                                                                   operational_since_source, window)))
        value_reasons += data_reasons
        value = None if value_reasons else round2((denominator - (t_out - t_excl)) / denominator * 100)
        meets = None if value is None else value > 97.0   # 680.116(b): "greater than 97 percent"
        verdict_reasons = value_reasons
    else:
        denominator = known_min
        eligible = True
        value = round2((known_min - (t_out - t_excl)) / known_min * 100) if known_min else None
        value_reasons = [] if value is not None else period_reasons if end == window[0] else data_reasons
        verdict_reasons = value_reasons or period_reasons
        meets = None if verdict_reasons or value is None else value > 97.0
    return UptimeResult(method, window[0], window[1], period_min, denominator, round2(t_out), round2(t_excl),
                        value, eligible, pro_rata, completeness, {k: round2(v) for k, v in by_reason.items()}, outs,
                        end, complete, known_min, meets, value_reasons, verdict_reasons, start_known,
                        live_min if live_lost is not None else 0.0, live_lost or 0.0)


def _younger(since: datetime, source: str, window: Interval) -> str:
    origin = {"port": "the port's operational_since", "location": "its location's operational_since",
              "registration": "its registration time: no operational_since is recorded for the port or its "
                              "location"}.get(source, source)
    return (f"operational since {utc_text(since)} ({origin}), after the window's start {utc_text(window[0])}: "
            "NEVI uptime "
            "is given for ports operated for the whole 12 months (23 CFR 680.116(b)(2)); see pro_rata_uptime_pct")


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


def local_month(month: str, time_zone: str) -> Interval:
    """The calendar month ``YYYY-MM`` in the station's zone, as UTC instants (DST-correct)."""
    year, number = (int(x) for x in month.split("-"))
    zone = ZoneInfo(time_zone)
    following = (year + 1, 1) if number == 12 else (year, number + 1)
    return (datetime(year, number, 1, tzinfo=zone).astimezone(UTC),
            datetime(*following, 1, tzinfo=zone).astimezone(UTC))
