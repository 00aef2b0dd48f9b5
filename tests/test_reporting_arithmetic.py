"""Report arithmetic against the worked examples of reporting.md §7.3 (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from csms.reporting import round2
from csms.reporting.calendar import report_bounds, walked_bounds
from csms.reporting.hours import local_day_bounds, opening_intervals
from csms.reporting.outages import PortTimeline, StatusChange, outages
from csms.reporting.uptime import Exclusion, nevi_window, uptime
from csms.reporting.usage import (
    BucketUsage,
    PortRef,
    add_available,
    add_port_minutes,
    bucket_figures,
    closed_groups,
)
from schemas.intervals import intersect, merge, minutes, subtract
from schemas.port_state import MeteredSession, PortHistory, port_minutes

DAY_HOURS = {"twentyfourseven": False,
             "regular_hours": [{"weekday": d, "period_begin": "06:00", "period_end": "22:00"} for d in range(1, 8)]}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def faults(spans: list[tuple[datetime, datetime]], since: datetime) -> PortTimeline:
    changes = [StatusChange(since, "Available")]
    for start, end in spans:
        changes += [StatusChange(start, "Faulted", "GroundFailure"), StatusChange(end, "Available")]
    return PortTimeline(port_status=changes, connectivity=[(since, "connected")])


def test_interval_operations() -> None:
    a = [(utc(2025, 1, 1, 0), utc(2025, 1, 1, 10)), (utc(2025, 1, 1, 5), utc(2025, 1, 1, 12))]
    assert merge(a) == [(utc(2025, 1, 1, 0), utc(2025, 1, 1, 12))]
    assert minutes(intersect(a, [(utc(2025, 1, 1, 11), utc(2025, 1, 2))])) == 60
    assert subtract(a, [(utc(2025, 1, 1, 1), utc(2025, 1, 1, 2))]) == [
        (utc(2025, 1, 1, 0), utc(2025, 1, 1, 1)), (utc(2025, 1, 1, 2), utc(2025, 1, 1, 12))]


# The NEVI examples: a year that is exactly 525,600 minutes, 4,000 faulted minutes in three outages.
YEAR = (utc(2025, 1, 1), utc(2026, 1, 1))
VANDALISM = [(utc(2025, 3, 1, 7), utc(2025, 3, 1, 21)), (utc(2025, 3, 2, 7), utc(2025, 3, 2, 9, 40))]  # 1,000 min
DAYTIME = [(utc(2025, 5, 5, 6), utc(2025, 5, 5, 22)), (utc(2025, 5, 6, 6), utc(2025, 5, 6, 22)),
           (utc(2025, 5, 7, 6), utc(2025, 5, 7, 15, 40))]                                           # 2,500 min
NIGHT = [(utc(2025, 7, 10, 22), utc(2025, 7, 11, 6)), (utc(2025, 7, 12, 23), utc(2025, 7, 12, 23, 20))]  # 500 min
SINCE = utc(2023, 6, 1)


def test_nevi_example_4000_faulted_1000_excluded_is_99_43() -> None:
    timeline = faults(VANDALISM + DAYTIME + NIGHT, SINCE)
    exclusions = [Exclusion(s, e, "vandalism") for s, e in VANDALISM]
    result = uptime(method="nevi", timeline=timeline, window=YEAR, opening=[YEAR], exclusions=exclusions,
                    operational_since=SINCE)
    assert result.t_outage_min == 4000
    assert result.t_excluded_min == 1000
    assert result.uptime_pct == 99.43                      # (525600 − 3000) / 525600
    assert result.meets_requirement is True
    assert result.denominator_minutes == 525_600


def test_nevi_example_outside_opening_hours_is_99_52() -> None:
    timeline = faults(VANDALISM + DAYTIME + NIGHT, SINCE)
    opening = opening_intervals(DAY_HOURS, "UTC", YEAR)
    result = uptime(method="nevi", timeline=timeline, window=YEAR, opening=opening,
                    exclusions=[Exclusion(s, e, "vandalism") for s, e in VANDALISM], operational_since=SINCE)
    assert result.t_excluded_min == 1500                   # 1,000 vandalism + 500 at night
    assert result.excluded_by_reason == {"outside_hours": 500, "vandalism": 1000}
    assert result.uptime_pct == 99.52                      # (525600 − 2500) / 525600


@pytest.mark.parametrize(("faulted", "expected", "meets"), [(2000, 99.62, True), (6000, 98.86, False)])
def test_uk_reliability_examples(faulted: int, expected: float, meets: bool) -> None:
    start = utc(2025, 4, 1)
    timeline = PortTimeline(
        port_status=[StatusChange(YEAR[0], "Available"), StatusChange(start, "Faulted"),
                     StatusChange(start + timedelta(minutes=faulted), "Available")],
        # 1,000 minutes offline (OCPI UNKNOWN) count as reliable under UK reg. 7
        connectivity=[(YEAR[0], "connected"), (utc(2025, 9, 1), "disconnected"),
                      (utc(2025, 9, 1) + timedelta(minutes=1000), "connected")])
    result = uptime(method="uk", timeline=timeline, window=YEAR, opening=[YEAR])
    assert result.uptime_pct == expected
    assert result.meets_requirement is meets


def test_windows_cut_status_intervals() -> None:
    timeline = faults([(utc(2025, 12, 31, 23), utc(2026, 1, 1, 1))], SINCE)
    spans = outages(timeline, (utc(2026, 1, 1), utc(2026, 1, 2)))
    assert [(o.start, o.end) for o in spans] == [(utc(2026, 1, 1), utc(2026, 1, 1, 1))]
    result = uptime(method="generic", timeline=timeline, window=(utc(2026, 1, 1), utc(2026, 1, 2)),
                    opening=[(utc(2026, 1, 1), utc(2026, 1, 2))])
    assert result.t_outage_min == 60
    assert result.uptime_pct == round2((1440 - 60) / 1440 * 100)


def test_offline_beyond_the_grace_period_is_an_outage() -> None:
    day = (utc(2026, 2, 1), utc(2026, 2, 2))
    timeline = PortTimeline(port_status=[StatusChange(day[0], "Available")],
                            connectivity=[(day[0], "connected"), (utc(2026, 2, 1, 10), "disconnected"),
                                          (utc(2026, 2, 1, 11), "connected")])
    assert uptime(method="generic", timeline=timeline, window=day, opening=[day]).t_outage_min == 60
    graced = uptime(method="generic", timeline=timeline, window=day, opening=[day],
                    offline_grace=timedelta(minutes=15))
    assert graced.t_outage_min == 45
    assert uptime(method="generic", timeline=timeline, window=day, opening=[day],
                  offline_counts=False).t_outage_min == 0


def test_dst_change_day_has_23_hours_and_16_opening_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = local_day_bounds(datetime(2026, 3, 29).date(), berlin)   # clocks go forward at 02:00
    assert minutes([day]) == 23 * 60
    opening = opening_intervals(DAY_HOURS, "Europe/Berlin", day)
    assert minutes(opening) == 16 * 60
    assert opening[0][0] == datetime(2026, 3, 29, 6, tzinfo=berlin).astimezone(UTC)
    timeline = faults([day], SINCE)
    result = uptime(method="generic", timeline=timeline, window=day, opening=opening)
    assert result.t_outage_min == 1380
    assert result.t_excluded_min == 1380 - 960               # the closed hours of a 23-hour day


def test_port_with_no_data_has_no_uptime() -> None:
    result = uptime(method="generic", timeline=PortTimeline(port_status=[]), window=YEAR, opening=[YEAR])
    assert result.uptime_pct is None
    assert result.data_completeness == 0


def test_port_younger_than_12_months_is_not_eligible_but_has_pro_rata() -> None:
    since = utc(2025, 7, 1)
    timeline = faults([(utc(2025, 8, 1), utc(2025, 8, 1, 12))], since)
    result = uptime(method="nevi", timeline=timeline, window=YEAR, opening=[YEAR], operational_since=since)
    assert result.eligible is False
    assert result.uptime_pct is None
    live = (YEAR[1] - since).total_seconds() / 60
    assert result.pro_rata_uptime_pct == round2((live - 720) / live * 100)
    assert 0 < result.data_completeness < 1


def test_nevi_window_is_the_12_months_ending_with_the_report_month() -> None:
    assert nevi_window("2025-12", "UTC") == YEAR
    start, end = nevi_window("2026-03", "America/Los_Angeles")
    assert start == datetime(2025, 4, 1, tzinfo=ZoneInfo("America/Los_Angeles")).astimezone(UTC)
    assert end == datetime(2026, 4, 1, tzinfo=ZoneInfo("America/Los_Angeles")).astimezone(UTC)


def _bucket(day: tuple[datetime, datetime], ports: list[tuple[PortRef, PortHistory | None]]) -> BucketUsage:
    """One report bucket over ``day``, by the code the utilization API runs on the raw rows."""
    out = [BucketUsage(day[0], day[1], ports=len(ports))]
    add_available(out, closed_groups([ref for ref, _ in ports]))
    for ref, history in ports:
        if history is not None:
            add_port_minutes(out, [day[0]], port_minutes(history, day), ref.closed)
            # sessions are counted by their start (in SQL in production: csms.store.report_usage)
            out[0].sessions += sum(1 for x in history.sessions if day[0] <= x.started_at < day[1])
    return out[0]


def test_utilization_example() -> None:
    day = (utc(2026, 1, 5), utc(2026, 1, 6))
    # OCPP 1.6: plugged 10:00–11:00 charging 10:05–10:50 (30 kWh); plugged 14:00–15:30 charging 14:00–15:00 (45 kWh)
    history = PortHistory(
        statuses=[(day[0], "Available"), (utc(2026, 1, 5, 10), "Preparing"), (utc(2026, 1, 5, 10, 5), "Charging"),
                  (utc(2026, 1, 5, 10, 50), "Finishing"), (utc(2026, 1, 5, 11), "Available"),
                  (utc(2026, 1, 5, 14), "Charging"), (utc(2026, 1, 5, 15), "Finishing"),
                  (utc(2026, 1, 5, 15, 30), "Available")],
        sessions=[MeteredSession(utc(2026, 1, 5, 10), utc(2026, 1, 5, 11), 0.0, 30_000.0),
                  MeteredSession(utc(2026, 1, 5, 14), utc(2026, 1, 5, 15, 30), 100_000.0, 145_000.0)])
    result = bucket_figures(_bucket(day, [(PortRef("CP", 1, 150.0), history)]))
    assert result["u_occupied_pct"] == 10.42                   # 150 / 1440
    assert result["u_charging_pct"] == 7.29                     # 105 / 1440
    assert result["u_idle_pct"] == 3.13
    assert result["capacity_factor_pct"] == 2.08                # 75 / (150 × 24)
    assert result["sessions_per_port_day"] == 2


def test_network_figures_come_from_minutes_not_averaged_percentages() -> None:
    day = (utc(2026, 1, 5), utc(2026, 1, 6))
    busy = PortHistory(statuses=[(day[0], "Charging")], sessions=[MeteredSession(day[0], day[1], 0.0, 1_200_000.0)])
    idle = PortRef("IDLE", 1, 50.0, closed=tuple(subtract([day], [(utc(2026, 1, 5, 6), utc(2026, 1, 5, 12))])))
    result = bucket_figures(_bucket(day, [(PortRef("BUSY", 1, 50.0), busy), (idle, None)]))
    assert result["u_occupied_pct"] == round2(1440 / (1440 + 360) * 100)   # not (100 + 0) / 2


def test_post_charge_idle_of_a_16_finishing_session() -> None:
    # StopTransaction (charging ended) at 10:50, unplugged (Finishing → Available) at 11:20.
    day = (utc(2026, 1, 5), utc(2026, 1, 6))
    history = PortHistory(statuses=[(day[0], "Available"), (utc(2026, 1, 5, 10), "Charging"),
                                    (utc(2026, 1, 5, 10, 50), "Finishing"), (utc(2026, 1, 5, 11, 20), "Available")])
    [span] = port_minutes(history, day).spans
    assert span.post_charge_idle_s == 30 * 60       # the median of one span (percentile_disc in SQL)
    assert bucket_figures(_bucket(day, [(PortRef("CP", 1, 22.0), history)]))["occupied_min"] == 80


@pytest.mark.parametrize("zone_name", ["America/Los_Angeles", "Asia/Kolkata", "Europe/Berlin", "America/Santiago",
                                       "America/Havana", "Asia/Beirut", "Australia/Lord_Howe", "Pacific/Chatham",
                                       "Asia/Kathmandu", "Africa/Casablanca"])
def test_day_week_month_bounds_jump_to_the_instants_the_quarter_hour_walk_finds(zone_name: str) -> None:
    """Local days, ISO weeks and months without walking every quarter hour: the same instants,
    also where a DST change skips or repeats local midnight (Santiago, Havana, Beirut)."""
    zone = ZoneInfo(zone_name)
    for start in (utc(2024, 1, 1), utc(2025, 3, 29, 22, 7), utc(2026, 8, 31, 23, 45)):
        window = (start, start + timedelta(days=400))
        for width in ("day", "week", "month"):
            assert report_bounds(window, width, zone) == walked_bounds(window, width, zone), (width, start)
