"""India's quarterly site energy statement: the pure arithmetic (no I/O).

MoP "Guidelines for Installation and Operation of EV Charging Infrastructure-2024" (reporting.md
§4.1) price energy by time of day — solar hours 09:00–16:00 at 0.7 × ACoS, the rest at 1.3 × —
and pay the land-owning agency ₹1 per kWh sold, quarterly. So the statement needs, per site and
quarter, kWh split at 09:00 and 16:00 *station-local* time, and a land-share amount.

Energy is attributed to the moment it flowed: the Energy.Active.Import.Register readings of a
transaction are differenced and each difference is spread uniformly over the time between its two
readings (linear interpolation of the register; ``schemas.port_state.session_energy``, the one rule
of every report). :func:`split` does that for one difference over a period and the solar window:
the reference the per-quarter-hour figures are tested against. All instants are aware
``datetime``s; local calendar boundaries are built with ``zoneinfo``, so a DST day has 23 or 25
hours and 09:00/16:00 stay wall-clock times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from schemas.port_state import LOOKBACK as ENERGY_LOOKBACK
from schemas.port_state import SOLAR_HOURS

# Sessions that started this long before a period and still ran at its start are counted as carried
# in: the horizon of a session's energy (schemas.port_state.session_energy), so a session counted as
# carried in is one that can have energy in the period.
CARRIED_IN_LOOKBACK = ENERGY_LOOKBACK
LOOKBACK_DAYS = ENERGY_LOOKBACK.days

SOLAR_START, SOLAR_END = SOLAR_HOURS
QuarterConvention = Literal["calendar", "fiscal_in"]
LOOKBACK = CARRIED_IN_LOOKBACK

ATTRIBUTION = (
    "The energy that flowed in each quarter hour, per port (EVSE), the same figure the utilization reports use: "
    "Energy.Active.Import.Register of each transaction, with meterStart at its start, the outlet register "
    "samples (phase-less; samples flagged as unreadable, implausible, backwards, outside the transaction, "
    "connector-0 totals or with an implausible timestamp do not count) and meterStop at its stop. A reading "
    "below an earlier one is held at the earlier value, so the differences never go negative and add up to "
    "meterStop - meterStart (0 if that is negative). Each difference is spread uniformly over the time between "
    "its two readings (linear interpolation; a session without intermediate samples spreads meterStop - "
    "meterStart over its duration; a session still open counts up to its latest reading; a session's energy "
    f"counts in its first {LOOKBACK_DAYS} days only). The quarter hours starting in [09:00, 16:00) "
    "station-local time (the location's IANA time zone, wall clock, DST-aware) are solar, the rest non-solar; "
    "only the energy that flowed inside the period counts, so a session crossing a quarter boundary is split "
    "between the quarters. Sessions are counted in the period in which they started; sessions_carried_in "
    f"started up to {LOOKBACK.days} days earlier and were still running when it began. energy_kwh = solar_kwh + "
    "non_solar_kwh, each rounded half up to the watt-hour; land_share_amount = energy_kwh x rate, rounded half "
    "up to 0.01; totals add up the sites' figures."
)


@dataclass(frozen=True, slots=True)
class Split:
    """Energy (Wh) inside a period, split into solar hours and the rest."""

    solar_wh: float = 0.0
    other_wh: float = 0.0

    def __add__(self, other: Split) -> Split:
        return Split(self.solar_wh + other.solar_wh, self.other_wh + other.other_wh)

    @property
    def total_wh(self) -> float:
        return self.solar_wh + self.other_wh


def _local(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, zone).astimezone(UTC)


def quarter_bounds(year: int, quarter: int, zone: ZoneInfo,
                   convention: QuarterConvention = "calendar") -> tuple[datetime, datetime]:
    """[start, end) in UTC of a quarter that begins and ends at station-local midnight.

    ``calendar``: Q1 = January–March of ``year``. ``fiscal_in``: India's financial year starting
    1 April of ``year`` (FY 2026-27 is ``year=2026``): Q1 = April–June, Q4 = January–March of
    ``year + 1``.
    """
    if not 1 <= quarter <= 4:
        raise ValueError("quarter must be 1-4")
    first_month = 3 * (quarter - 1) + (1 if convention == "calendar" else 4)
    start_year = year + (first_month - 1) // 12
    start_month = (first_month - 1) % 12 + 1
    end_year = start_year + (start_month + 2) // 12
    end_month = (start_month + 2) % 12 + 1
    return (_local(date(start_year, start_month, 1), time(0), zone),
            _local(date(end_year, end_month, 1), time(0), zone))


def period_label(year: int, quarter: int, convention: QuarterConvention) -> str:
    if convention == "calendar":
        return f"{year}-Q{quarter}"
    return f"FY{year}-{(year + 1) % 100:02d} Q{quarter}"


def _solar_seconds(start: datetime, end: datetime, zone: ZoneInfo) -> float:
    """Seconds of [start, end) that fall in the local solar window of any day."""
    seconds = 0.0
    day = start.astimezone(zone).date()
    last = end.astimezone(zone).date()
    while day <= last:  # bounded: one pass per local day of a clipped interval
        lo = max(start, _local(day, SOLAR_START, zone))
        hi = min(end, _local(day, SOLAR_END, zone))
        if hi > lo:
            seconds += (hi - lo).total_seconds()
        day += timedelta(days=1)
    return seconds


def solar_edges(zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Every local 09:00 and 16:00 as UTC instants, sorted, from the local day before ``start`` to the
    local day after ``end``. Between two consecutive edges the class (solar or not) does not change, so
    the number of edges at or before a moment (SQL ``width_bucket``) names its class: odd = solar."""
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    edges = []
    while day <= last:  # bounded: two edges per local day of [start, end]
        edges += [_local(day, SOLAR_START, zone), _local(day, SOLAR_END, zone)]
        day += timedelta(days=1)
    return edges


def in_solar_window(moment: datetime, zone: ZoneInfo) -> bool:
    local = moment.astimezone(zone).time()
    return SOLAR_START <= local < SOLAR_END


def split(t0: datetime, t1: datetime, wh: float, *, zone: ZoneInfo, period: tuple[datetime, datetime]) -> Split:
    """The part of ``wh``, spread uniformly over [t0, t1), that flowed inside ``period``, split by
    the solar window. An instantaneous step (t1 == t0) belongs entirely to its instant."""
    if t1 < t0:
        raise ValueError("t1 before t0")
    if t1 == t0:
        if not period[0] <= t0 < period[1]:
            return Split()
        return Split(solar_wh=wh) if in_solar_window(t0, zone) else Split(other_wh=wh)
    lo, hi = max(t0, period[0]), min(t1, period[1])
    if hi <= lo:
        return Split()
    span = (t1 - t0).total_seconds()
    inside = (hi - lo).total_seconds()
    solar = _solar_seconds(lo, hi, zone)
    return Split(solar_wh=wh * solar / span, other_wh=wh * (inside - solar) / span)


def kwh(wh: float) -> Decimal:
    """Wh → kWh rounded half-up to 3 decimals (watt-hours), the precision the statement shows."""
    return (Decimal(repr(wh)) / 1000).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)


def land_share(energy_kwh: Decimal, rate_per_kwh: Decimal) -> Decimal:
    """The land-owner's share of the shown kWh at ``rate_per_kwh``, half-up to 2 decimals (paise)."""
    return (energy_kwh * rate_per_kwh).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
