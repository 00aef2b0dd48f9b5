"""Unit tests of meter-value normalisation and data-quality flags (R43, R49–R51, J02.FR.16)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from csms.ocpp.normalise import (
    DEFAULT_MEASURAND,
    RegisterTracker,
    is_energy_register,
    make_sample,
    parse_timestamp,
    register_reading,
    samples_v16,
    samples_v201,
    timestamp_flags,
)
from schemas.events import (
    FLAG_ANCIENT_TIMESTAMP,
    FLAG_CONNECTOR_ZERO_TOTAL,
    FLAG_FUTURE_TIMESTAMP,
    FLAG_IMPLAUSIBLE_UNIT,
    FLAG_REGISTER_DECREASED,
    FLAG_UNPARSEABLE_VALUE,
    Sample,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
TS = "2024-06-01T11:59:00Z"


def sample(raw_value: object = "1", raw_unit: str | None = None, *, multiplier: int = 0,
           measurand: str | None = None, time: datetime = NOW, connector_zero: bool = False,
           signed: bool = False, phase: str | None = None, context: str | None = None) -> Sample:
    return make_sample(time=time, received_at=NOW, raw_value=raw_value, raw_unit=raw_unit, multiplier=multiplier,
                       measurand=measurand, phase=phase, location=None, context=context,
                       connector_zero=connector_zero, signed=signed)


def v16(*sampled: dict[str, Any], connector_id: int = 1, ts: str | None = TS) -> list[Sample]:
    mv: dict[str, Any] = {"sampledValue": list(sampled)}
    if ts is not None:
        mv["timestamp"] = ts
    return samples_v16([mv], received_at=NOW, connector_id=connector_id)


def v201(*sampled: dict[str, Any], evse_id: int = 1, ts: str | None = TS) -> list[Sample]:
    mv: dict[str, Any] = {"sampledValue": list(sampled)}
    if ts is not None:
        mv["timestamp"] = ts
    return samples_v201([mv], received_at=NOW, evse_id=evse_id)


def reg(value: float, time: datetime, *, measurand: str = DEFAULT_MEASURAND, phase: str = "",
        context: str = "Sample.Periodic") -> Sample:
    return Sample(time=time, measurand=measurand, phase=phase, location="Outlet", context=context, value=value,
                  unit="Wh", raw_value=str(value), raw_unit="Wh")


# --- units and multipliers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "unit", "measurand", "value", "si"), [
    ("1.5", "kWh", None, 1500.0, "Wh"),
    ("0.1", "kWh", None, 100.0, "Wh"),
    ("1234", "Wh", None, 1234.0, "Wh"),
    ("7.2", "kW", "Power.Active.Import", 7200.0, "W"),
    ("350", "W", "Power.Active.Import", 350.0, "W"),
    ("2", "kvarh", "Energy.Reactive.Import.Register", 2000.0, "varh"),
    ("3", "kvar", "Power.Reactive.Import", 3000.0, "var"),
    ("4", "kVAh", "Energy.Apparent.Import", 4000.0, "VAh"),
    ("16", "A", "Current.Import", 16.0, "A"),
    ("230", "V", "Voltage", 230.0, "V"),
    ("50", "Hertz", "Frequency", 50.0, "Hz"),
    ("50", "Hz", "Frequency", 50.0, "Hz"),
    ("80", "Percent", "SoC", 80.0, "Percent"),
    ("25", "Celsius", "Temperature", 25.0, "Celsius"),
    ("25", "Celcius", "Temperature", 25.0, "Celsius"),  # 1.6 JSON errata 2.1
    ("212", "Fahrenheit", "Temperature", 100.0, "Celsius"),
    ("32", "Fahrenheit", "Temperature", 0.0, "Celsius"),
    ("300", "K", "Temperature", 26.85, "Celsius"),
    ("273.15", "K", "Temperature", 0.0, "Celsius"),
])
def test_unit_conversion(raw: str, unit: str, measurand: str | None, value: float, si: str) -> None:
    s = sample(raw, unit, measurand=measurand)
    assert s.value == pytest.approx(value, abs=1e-9)
    assert s.unit == si
    assert s.raw_value == raw
    assert s.raw_unit == unit
    assert s.flags == 0


def test_201_multiplier() -> None:
    [s] = v201({"value": 12.5, "unitOfMeasure": {"unit": "Wh", "multiplier": 3}})
    assert s.value == 12500.0
    assert s.unit == "Wh"
    assert s.raw_value == "12.5"
    assert s.raw_unit == "Whe3"
    assert s.flags == 0


def test_201_multiplier_with_kwh_and_negative_multiplier() -> None:
    [s] = v201({"value": 12.5, "unitOfMeasure": {"unit": "kWh", "multiplier": 3}})
    assert s.value == 12_500_000.0
    [s] = v201({"value": 1234, "unitOfMeasure": {"unit": "Wh", "multiplier": -1}})
    assert s.value == pytest.approx(123.4)
    assert s.raw_unit == "Whe-1"


def test_201_multiplier_of_a_fraction() -> None:
    [s] = v201({"value": 0.1, "unitOfMeasure": {"unit": "Wh", "multiplier": 1}})
    assert s.value == 1.0


def test_201_defaults_to_wh_and_no_multiplier() -> None:
    [s] = v201({"value": 42})
    assert (s.measurand, s.unit, s.value, s.raw_unit) == (DEFAULT_MEASURAND, "Wh", 42.0, "Wh")
    assert (s.context, s.location, s.phase) == ("Sample.Periodic", "Outlet", "")


@pytest.mark.parametrize("multiplier", [21, -21, 10**6, True, "3", 1.5])
def test_201_implausible_or_wrongly_typed_multiplier_is_ignored(multiplier: object) -> None:
    [s] = v201({"value": 5, "unitOfMeasure": {"unit": "Wh", "multiplier": multiplier}})
    assert s.value == 5.0
    assert s.raw_unit == "Wh"


def test_16_defaults() -> None:
    [s] = v16({"value": "1000"})
    assert s.measurand == "Energy.Active.Import.Register"
    assert s.unit == "Wh"
    assert s.raw_unit == "Wh"
    assert s.context == "Sample.Periodic"
    assert s.location == "Outlet"
    assert s.phase == ""
    assert s.value == 1000.0
    assert s.time == datetime(2024, 6, 1, 11, 59, tzinfo=UTC)
    assert s.flags == 0


def test_16_default_unit_follows_the_measurand() -> None:
    [power, current, soc] = v16({"value": "7", "measurand": "Power.Active.Import"},
                                {"value": "16", "measurand": "Current.Import", "phase": "L1"},
                                {"value": "55", "measurand": "SoC"})
    assert (power.unit, current.unit, soc.unit) == ("W", "A", "Percent")
    assert current.phase == "L1"
    assert all(s.flags == 0 for s in (power, current, soc))


def test_16_keeps_given_context_and_location() -> None:
    [s] = v16({"value": "1", "context": "Transaction.Begin", "location": "Inlet"})
    assert (s.context, s.location) == ("Transaction.Begin", "Inlet")


def test_missing_timestamp_uses_received_at() -> None:
    [s] = v16({"value": "1"}, ts=None)
    assert s.time == NOW
    [s] = v201({"value": 1}, ts="garbage")
    assert s.time == NOW


# --- unparseable values ---------------------------------------------------------------------------------------


def test_signed_data_is_nan_and_flagged() -> None:
    [s] = v16({"value": "0A1B2C3D", "format": "SignedData"})
    assert math.isnan(s.value)
    assert s.flags & FLAG_UNPARSEABLE_VALUE
    assert s.raw_value == "0A1B2C3D"


def test_signed_data_that_looks_numeric_is_still_not_a_number() -> None:
    [s] = v16({"value": "1234", "format": "SignedData"})
    assert math.isnan(s.value)
    assert s.flags & FLAG_UNPARSEABLE_VALUE


@pytest.mark.parametrize("raw", ["abc", "1_000", "", " ", "1,5", "0x10", "NaN", "nan", "inf", "Infinity", "-inf",
                                 "1e", "--1", "1.2.3", "\u0663", "\u0661\u0662", "１２", True, None, [1], {"v": 1},
                                 math.nan, math.inf])
def test_non_numeric_values_are_flagged(raw: object) -> None:
    s = sample(raw)
    assert math.isnan(s.value)
    assert s.flags & FLAG_UNPARSEABLE_VALUE


@pytest.mark.parametrize(("raw", "value"), [("12", 12.0), (" 12 ", 12.0), ("+1.5", 1.5), ("-0.5", -0.5), (".5", 0.5),
                                            ("5.", 5.0), ("1e3", 1000.0), ("1E-3", 0.001), (12, 12.0), (1.25, 1.25)])
def test_numeric_values_parse(raw: object, value: float) -> None:
    s = sample(raw, "Wh")
    assert s.value == value
    assert not s.flags & FLAG_UNPARSEABLE_VALUE


def test_raw_value_is_kept_but_bounded() -> None:
    s = sample("9" * 200)
    assert len(s.raw_value) == 64


@pytest.mark.parametrize(("raw", "multiplier"), [("1e999999", 0), ("1e999999", 3), (1.7e308, 3), ("9" * 400, 0)])
def test_values_too_large_for_a_float_are_nan_not_infinity(raw: object, multiplier: int) -> None:
    s = sample(raw, "Wh", multiplier=multiplier)  # never raises (decimal.Overflow), never stores inf
    assert math.isnan(s.value)
    assert s.flags & FLAG_UNPARSEABLE_VALUE


def test_201_string_value_with_overflowing_exponent_does_not_raise() -> None:
    # Reachable in tolerant mode, where a 2.0.1 value may arrive as a string.
    [s] = v201({"value": "1e999999", "unitOfMeasure": {"unit": "Wh", "multiplier": 3}})
    assert math.isnan(s.value)
    assert s.flags & FLAG_UNPARSEABLE_VALUE


# --- timestamps -----------------------------------------------------------------------------------------------


def test_timestamp_before_2010_is_flagged() -> None:
    assert sample(time=datetime(2009, 12, 31, 23, 59, tzinfo=UTC)).flags == FLAG_ANCIENT_TIMESTAMP
    assert sample(time=datetime(1970, 1, 1, tzinfo=UTC)).flags == FLAG_ANCIENT_TIMESTAMP
    assert sample(time=datetime(2010, 1, 1, tzinfo=UTC)).flags == 0


def test_timestamp_more_than_five_minutes_ahead_is_flagged() -> None:
    assert sample(time=NOW + timedelta(minutes=5, seconds=1)).flags == FLAG_FUTURE_TIMESTAMP
    assert sample(time=NOW + timedelta(days=400)).flags == FLAG_FUTURE_TIMESTAMP
    assert sample(time=NOW + timedelta(minutes=5)).flags == 0
    assert sample(time=NOW + timedelta(minutes=4)).flags == 0


def test_timestamp_flags_directly() -> None:
    assert timestamp_flags(NOW, NOW) == 0
    assert timestamp_flags(datetime(2001, 1, 1, tzinfo=UTC), NOW) == FLAG_ANCIENT_TIMESTAMP
    assert timestamp_flags(NOW + timedelta(hours=1), NOW) == FLAG_FUTURE_TIMESTAMP


def test_16_samples_with_ancient_timestamp_are_flagged() -> None:
    [s] = v16({"value": "1"}, ts="2000-01-01T00:00:00Z")
    assert s.flags & FLAG_ANCIENT_TIMESTAMP


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-06-01T12:00:00Z", datetime(2024, 6, 1, 12, tzinfo=UTC)),
    ("2024-06-01T14:00:00+02:00", datetime(2024, 6, 1, 12, tzinfo=UTC)),
    ("2024-06-01T12:00:00.123Z", datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)),
    ("2024-06-01T12:00:00", datetime(2024, 6, 1, 12, tzinfo=UTC)),  # naive is read as UTC
    # RFC 3339 §5.6: "T" and "Z" may be lower case (the schemas' date-time format accepts both).
    ("2024-06-01t12:00:00z", datetime(2024, 6, 1, 12, tzinfo=UTC)),
    ("2024-06-01T12:00:00.5z", datetime(2024, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)),
    ("2024-06-01T14:00:00+0200", datetime(2024, 6, 1, 12, tzinfo=UTC)),
])
def test_parse_timestamp(text: str, expected: datetime) -> None:
    ts = parse_timestamp(text)
    assert ts == expected
    assert ts is not None
    assert ts.tzinfo is UTC


@pytest.mark.parametrize("value", [None, 5, "", "not-a-date", "2024-13-01T00:00:00Z", [], "0001-01-01T00:00:00+01:00",
                                   "9999-12-31T23:59:59-01:00"])
def test_parse_timestamp_rejects_without_raising(value: object) -> None:
    assert parse_timestamp(value) is None


def test_parse_timestamp_converts_other_offsets_to_utc() -> None:
    ts = parse_timestamp("2024-06-01T06:30:00-05:30")
    assert ts == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert ts is not None
    assert ts.utcoffset() == timedelta(0)


# --- plausibility ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("measurand", "unit", "raw"), [
    ("Energy.Active.Import.Register", "W", "100"),
    ("Energy.Active.Import.Register", "A", "100"),
    ("Power.Active.Import", "Wh", "100"),
    ("Voltage", "A", "230"),
    ("SoC", "Percent", "150"),
    ("Voltage", "V", "5000"),
    ("Energy.Active.Import.Register", "Wh", "-5"),
    ("Power.Factor", None, "5"),
    ("Temperature", "Celsius", "1000"),
    ("Frequency", "Hz", "-1"),
    ("Vendor.Custom", "Bogus", "1"),
])
def test_implausible_unit_or_magnitude_is_flagged(measurand: str, unit: str | None, raw: str) -> None:
    s = sample(raw, unit, measurand=measurand)
    assert s.flags & FLAG_IMPLAUSIBLE_UNIT
    assert not s.flags & FLAG_UNPARSEABLE_VALUE


def test_unknown_measurand_with_a_known_unit_is_not_flagged() -> None:
    assert sample("1", "W", measurand="Vendor.Custom").flags == 0
    assert sample("1", None, measurand="Vendor.Custom").flags == 0


def test_energy_with_unit_w_in_16_message() -> None:
    [s] = v16({"value": "100", "measurand": "Energy.Active.Import.Register", "unit": "W"})
    assert s.flags & FLAG_IMPLAUSIBLE_UNIT


# --- connector 0 ----------------------------------------------------------------------------------------------


def test_connector_zero_energy_register_is_flagged() -> None:
    [s] = v16({"value": "100"}, connector_id=0)
    assert s.flags == FLAG_CONNECTOR_ZERO_TOTAL
    [s] = v201({"value": 100}, evse_id=0)
    assert s.flags == FLAG_CONNECTOR_ZERO_TOTAL


def test_connector_zero_other_measurands_are_not_flagged() -> None:
    [power, interval] = v16({"value": "100", "measurand": "Power.Active.Import"},
                            {"value": "100", "measurand": "Energy.Active.Import.Interval"}, connector_id=0)
    assert power.flags == 0
    assert interval.flags == 0


def test_connector_one_register_is_not_flagged() -> None:
    [s] = v16({"value": "100"}, connector_id=1)
    assert s.flags == 0


def test_is_energy_register() -> None:
    assert is_energy_register("Energy.Active.Import.Register")
    assert is_energy_register("Energy.Reactive.Export.Register")
    assert not is_energy_register("Energy.Active.Import.Interval")
    assert not is_energy_register("Power.Active.Import")


# --- register tracking ----------------------------------------------------------------------------------------


def test_register_decrease_is_flagged_when_the_later_sample_is_lower() -> None:
    tracker = RegisterTracker()
    t0 = NOW
    [a] = tracker.check(1, 1, [reg(1000.0, t0)])
    [b] = tracker.check(1, 1, [reg(900.0, t0 + timedelta(minutes=1))])
    assert not a.flags & FLAG_REGISTER_DECREASED
    assert b.flags & FLAG_REGISTER_DECREASED
    assert b.value == 900.0  # flagged, not altered


def test_register_increase_or_equal_is_not_flagged() -> None:
    tracker = RegisterTracker()
    out = tracker.check(1, 1, [reg(1000.0, NOW), reg(1000.0, NOW + timedelta(minutes=1)),
                               reg(1500.0, NOW + timedelta(minutes=2))])
    assert all(not s.flags & FLAG_REGISTER_DECREASED for s in out)


def test_older_lower_sample_arriving_late_is_not_flagged() -> None:
    tracker = RegisterTracker()
    tracker.check(1, 1, [reg(1000.0, NOW)])
    [late] = tracker.check(1, 1, [reg(900.0, NOW - timedelta(minutes=1))])
    assert not late.flags & FLAG_REGISTER_DECREASED
    # ... and it does not become the reference: a later 950 is still below the newest 1000.
    [after] = tracker.check(1, 1, [reg(950.0, NOW + timedelta(minutes=1))])
    assert after.flags & FLAG_REGISTER_DECREASED


def test_same_timestamp_lower_is_not_flagged() -> None:
    tracker = RegisterTracker()
    tracker.check(1, 1, [reg(1000.0, NOW)])
    [same] = tracker.check(1, 1, [reg(900.0, NOW)])
    assert not same.flags & FLAG_REGISTER_DECREASED


def test_registers_are_tracked_per_evse_connector_measurand_phase() -> None:
    tracker = RegisterTracker()
    later = NOW + timedelta(minutes=1)
    tracker.check(1, 1, [reg(1000.0, NOW), reg(1000.0, NOW, phase="L1"),
                         reg(1000.0, NOW, measurand="Energy.Active.Export.Register")])
    out = tracker.check(2, 1, [reg(10.0, later)])
    out += tracker.check(1, 2, [reg(10.0, later)])
    out += tracker.check(1, 1, [reg(10.0, later, phase="L2")])
    out += tracker.check(1, 1, [reg(10.0, later, measurand="Energy.Reactive.Import.Register")])
    assert all(not s.flags & FLAG_REGISTER_DECREASED for s in out)
    [l1] = tracker.check(1, 1, [reg(10.0, later, phase="L1")])
    [export] = tracker.check(1, 1, [reg(10.0, later, measurand="Energy.Active.Export.Register")])
    assert l1.flags & FLAG_REGISTER_DECREASED
    assert export.flags & FLAG_REGISTER_DECREASED


def test_non_register_and_nan_samples_are_not_tracked() -> None:
    tracker = RegisterTracker()
    later = NOW + timedelta(minutes=1)
    tracker.check(1, 1, [reg(1000.0, NOW, measurand="Power.Active.Import"),
                         reg(1000.0, NOW, measurand="Energy.Active.Import.Interval")])
    out = tracker.check(1, 1, [reg(1.0, later, measurand="Power.Active.Import"),
                               reg(1.0, later, measurand="Energy.Active.Import.Interval")])
    assert all(s.flags == 0 for s in out)
    tracker.check(1, 1, [reg(1000.0, NOW)])
    [nan] = tracker.check(1, 1, [reg(math.nan, later)])
    assert nan.flags == 0
    [after] = tracker.check(1, 1, [reg(999.0, later + timedelta(minutes=1))])
    assert after.flags & FLAG_REGISTER_DECREASED


def test_decrease_within_one_message_is_flagged() -> None:
    tracker = RegisterTracker()
    out = tracker.check(1, 1, [reg(1000.0, NOW), reg(999.0, NOW + timedelta(seconds=30))])
    assert [bool(s.flags & FLAG_REGISTER_DECREASED) for s in out] == [False, True]


def test_register_tracker_is_bounded() -> None:
    tracker = RegisterTracker()
    for evse in range(1000):
        tracker.check(evse, 1, [reg(1.0, NOW)])
    assert len(tracker.last) <= 256


# --- register_reading -----------------------------------------------------------------------------------------


def test_register_reading_picks_the_import_register_of_a_context() -> None:
    samples = [
        reg(5.0, NOW, measurand="Power.Active.Import", context="Transaction.Begin"),
        reg(7.0, NOW, phase="L1", context="Transaction.Begin"),
        reg(math.nan, NOW, context="Transaction.Begin"),
        reg(100.0, NOW, context="Transaction.Begin"),
        reg(200.0, NOW, context="Transaction.End"),
        reg(150.0, NOW, context="Sample.Periodic"),
    ]
    assert register_reading(samples, context="Transaction.Begin") == 100.0
    assert register_reading(samples, context="Transaction.End") == 200.0
    assert register_reading(samples, context="Sample.Clock") is None
    assert register_reading(samples) == 100.0
    assert register_reading([]) is None


def test_register_reading_of_normalised_201_samples() -> None:
    samples = v201({"value": 1.5, "context": "Transaction.Begin", "unitOfMeasure": {"unit": "kWh"}},
                   {"value": 2.5, "context": "Transaction.End", "unitOfMeasure": {"unit": "kWh"}})
    assert register_reading(samples, context="Transaction.Begin") == 1500.0
    assert register_reading(samples, context="Transaction.End") == 2500.0
