"""Port state minutes (schemas/port_state.py) and report buckets (csms/reporting/calendar.py):
pure arithmetic, no sockets."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from csms.reporting.calendar import hour_of_week, report_bounds
from schemas.port_state import PortHistory, TxEvent, ceil_bucket, floor_bucket, port_minutes

DAY = datetime(2025, 6, 3, tzinfo=UTC)


def at(hour: int, minute: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute)


# The reference's utilization example (reporting.md §7.3 example 4), as OCPP 1.6 statuses.
EXAMPLE_16 = PortHistory(statuses=[
    (at(0), "Available"),
    (at(10), "Preparing"), (at(10, 5), "Charging"), (at(10, 50), "Finishing"), (at(11), "Available"),
    (at(14), "Charging"), (at(15), "Finishing"), (at(15, 30), "Available")])


def test_quarter_hour_buckets() -> None:
    assert floor_bucket(at(10, 7)) == at(10)
    assert floor_bucket(at(10, 15)) == at(10, 15)
    assert ceil_bucket(at(10, 7)) == at(10, 15)
    assert ceil_bucket(at(10)) == at(10)


def test_example_minutes_per_bucket_and_totals() -> None:
    result = port_minutes(EXAMPLE_16, (at(0), at(24)))
    occupied = sum(v[0] for v in result.buckets.values()) / 60
    charging = sum(v[1] for v in result.buckets.values()) / 60
    assert (occupied, charging) == (150.0, 105.0)
    assert result.buckets[at(10)] == (900.0, 600.0)        # charging from 10:05
    assert result.buckets[at(10, 45)] == (900.0, 300.0)    # charging until 10:50
    assert at(12) not in result.buckets                     # sparse: nothing happened
    # Post-charge idle: plug-out minus the end of charging (example 6: 10:50 → 11:00 is 10 min).
    assert [(s.started_at, s.ended_at, s.charging_s, s.post_charge_idle_s) for s in result.spans] == [
        (at(10), at(11), 45 * 60.0, 10 * 60.0), (at(14), at(15, 30), 60 * 60.0, 30 * 60.0)]


def test_window_cuts_intervals_and_open_occupancy_is_no_span() -> None:
    result = port_minutes(EXAMPLE_16, (at(10, 30), at(14, 30)))
    assert sum(v[0] for v in result.buckets.values()) / 60 == 30 + 30
    assert sum(v[1] for v in result.buckets.values()) / 60 == 20 + 30
    assert [s.ended_at for s in result.spans] == [at(11)]  # the 14:00 occupancy is still open at 14:30


def test_last_state_lasts_until_the_window_end() -> None:
    history = PortHistory(statuses=[(at(9), "Occupied")])
    result = port_minutes(history, (at(10), at(11)))
    assert sum(v[0] for v in result.buckets.values()) == 3600.0
    assert result.spans == []


def test_a_port_without_rows_has_no_minutes() -> None:
    assert port_minutes(PortHistory(statuses=[]), (at(0), at(1))).buckets == {}
    history = PortHistory(statuses=[], transactions=[[]])
    assert port_minutes(history, (at(0), at(1))).spans == []


def test_201_charging_comes_from_transaction_events() -> None:
    history = PortHistory(
        statuses=[(at(8), "Available"), (at(9), "Occupied"), (at(11), "Available")],
        transactions=[[TxEvent(at(9), "EVConnected", False), TxEvent(at(9, 10), "Charging", False),
                       TxEvent(at(9, 40), None, False),               # state not repeated: still charging
                       TxEvent(at(10), "SuspendedEV", False), TxEvent(at(10, 30), "Charging", False),
                       TxEvent(at(10, 45), "Charging", True)]])       # Ended: charging stops
    result = port_minutes(history, (at(8), at(12)))
    assert sum(v[1] for v in result.buckets.values()) / 60 == 50 + 15
    assert sum(v[0] for v in result.buckets.values()) / 60 == 120
    [span] = result.spans
    assert span.post_charge_idle_s == 15 * 60.0   # 10:45 → 11:00


def test_201_open_transaction_charges_until_the_window_end() -> None:
    history = PortHistory(statuses=[(at(9), "Occupied")],
                          transactions=[[TxEvent(at(9), "Charging", False)]])
    result = port_minutes(history, (at(9), at(10)))
    assert sum(v[1] for v in result.buckets.values()) == 3600.0


def test_day_buckets_on_dst_changes() -> None:
    la = ZoneInfo("America/Los_Angeles")
    start = datetime(2025, 11, 1, tzinfo=la).astimezone(UTC)
    end = datetime(2025, 11, 4, tzinfo=la).astimezone(UTC)
    bounds = report_bounds((start, end), "day", la)
    assert [(b - a).total_seconds() / 3600 for a, b in itertools.pairwise(bounds)] == [24, 25, 24]
    spring = datetime(2025, 3, 9, tzinfo=la).astimezone(UTC)
    bounds = report_bounds((spring, spring + timedelta(hours=23)), "hour", la)
    assert len(bounds) - 1 == 23
    assert bounds[-2].astimezone(la).hour == 23


def test_hour_buckets_in_india_start_at_half_past_utc() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    bounds = report_bounds((at(0), at(3)), "hour", kolkata)
    assert bounds == [at(0), at(0, 30), at(1, 30), at(2, 30), at(3)]
    assert hour_of_week(at(0, 30), kolkata) == (2, 6)   # Tuesday 06:00 IST


def test_week_and_month_buckets() -> None:
    zone = ZoneInfo("Europe/Berlin")
    start = datetime(2025, 3, 1, tzinfo=zone).astimezone(UTC)
    end = datetime(2025, 5, 1, tzinfo=zone).astimezone(UTC)
    months = report_bounds((start, end), "month", zone)
    assert [b.astimezone(zone).strftime("%m-%d %H:%M") for b in months] == ["03-01 00:00", "04-01 00:00",
                                                                             "05-01 00:00"]
    weeks = report_bounds((start, end), "week", zone)
    assert all(b.astimezone(zone).isoweekday() == 1 for b in weeks[1:-1])
    assert report_bounds((start, end), "none", zone) == [start, end]
    with pytest.raises(ValueError, match="bucket"):
        report_bounds((start, end), "fortnight", zone)
