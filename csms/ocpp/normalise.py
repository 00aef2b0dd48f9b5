"""Meter values to SI samples, with data-quality flags (pure functions).

1.6 ``sampledValue.value`` is a string (decimal, or hex SignedData) with a separate
``unit`` (1.6J §7.43 defaults: measurand Energy.Active.Import.Register, unit Wh,
context Sample.Periodic, location Outlet, format Raw); 2.0.1 values are numbers with
``unitOfMeasure {unit, multiplier}`` where the real value is value × 10^multiplier
(Part 2 §2.2 UnitOfMeasureType). Samples are stored in Wh, varh, VAh, W, var, VA, A,
V, Hz, Percent and Celsius; the raw value and unit are kept alongside. Values are
telemetry doubles; billing uses the transaction's integer meter readings.

Timestamps (:func:`event_time`, the same rule for every message type): one before 2010, more
than five minutes after the message was received, or unreadable is never stored as the event's
time — the receive time is, with the data-quality flag set and the charger's text kept — so no
implausible instant enters the reports' arithmetic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from schemas.events import (
    FLAG_ANCIENT_TIMESTAMP,
    FLAG_CONNECTOR_ZERO_TOTAL,
    FLAG_FUTURE_TIMESTAMP,
    FLAG_IMPLAUSIBLE_UNIT,
    FLAG_OUTSIDE_TRANSACTION,
    FLAG_REGISTER_DECREASED,
    FLAG_UNPARSEABLE_VALUE,
    Sample,
)

DEFAULT_MEASURAND = "Energy.Active.Import.Register"
EARLIEST_PLAUSIBLE = datetime(2010, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(minutes=5)
# ASCII digits only: 1.6 `value` is a decimal (§7.43), and float() would also take "١٢" or "1_000".
_DECIMAL = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$", re.ASCII)

# raw unit → (SI unit, factor, offset): si = raw × factor + offset
_UNITS: dict[str, tuple[str, float, float]] = {
    "Wh": ("Wh", 1.0, 0.0), "kWh": ("Wh", 1000.0, 0.0),
    "varh": ("varh", 1.0, 0.0), "kvarh": ("varh", 1000.0, 0.0),
    "VAh": ("VAh", 1.0, 0.0), "kVAh": ("VAh", 1000.0, 0.0),
    "W": ("W", 1.0, 0.0), "kW": ("W", 1000.0, 0.0),
    "var": ("var", 1.0, 0.0), "kvar": ("var", 1000.0, 0.0),
    "VA": ("VA", 1.0, 0.0), "kVA": ("VA", 1000.0, 0.0),
    "A": ("A", 1.0, 0.0), "V": ("V", 1.0, 0.0),
    # 1.6 JSON errata 2.1: "Celcius" is accepted as well as "Celsius".
    "Celsius": ("Celsius", 1.0, 0.0), "Celcius": ("Celsius", 1.0, 0.0),
    "Fahrenheit": ("Celsius", 5 / 9, -32 * 5 / 9), "K": ("Celsius", 1.0, -273.15),
    "Percent": ("Percent", 1.0, 0.0),
    "Hz": ("Hz", 1.0, 0.0), "Hertz": ("Hz", 1.0, 0.0),  # 1.6 errata 3.86 spells it Hertz
}

# measurand prefix → (default unit, SI units that make sense, plausible SI range)
_FAMILIES: list[tuple[str, str, frozenset[str], tuple[float, float]]] = [
    ("Energy.Active.", "Wh", frozenset({"Wh"}), (0.0, 1e11)),
    ("Energy.Reactive.", "varh", frozenset({"varh"}), (-1e11, 1e11)),
    ("Energy.Apparent.", "VAh", frozenset({"VAh"}), (0.0, 1e11)),
    ("Power.Active.", "W", frozenset({"W"}), (-5e6, 5e6)),
    ("Power.Offered", "W", frozenset({"W"}), (0.0, 5e6)),
    ("Power.Reactive.", "var", frozenset({"var"}), (-5e6, 5e6)),
    ("Power.Factor", "", frozenset({""}), (-1.0, 1.0)),
    ("Current.", "A", frozenset({"A"}), (-5000.0, 5000.0)),
    ("Voltage", "V", frozenset({"V"}), (0.0, 2000.0)),
    ("Frequency", "Hz", frozenset({"Hz"}), (0.0, 1000.0)),
    ("SoC", "Percent", frozenset({"Percent"}), (0.0, 100.0)),
    ("Temperature", "Celsius", frozenset({"Celsius"}), (-80.0, 300.0)),
    ("RPM", "RPM", frozenset({"RPM"}), (0.0, 1e6)),
]


_FAMILY_CACHE: dict[str, tuple[str, frozenset[str], tuple[float, float]] | None] = {}


def _family(measurand: str) -> tuple[str, frozenset[str], tuple[float, float]] | None:
    try:
        return _FAMILY_CACHE[measurand]
    except KeyError:
        pass
    found = None
    for prefix, default, units, rng in _FAMILIES:
        if measurand.startswith(prefix):
            found = (default, units, rng)
            break
    if len(_FAMILY_CACHE) < 1024:  # measurand names come from chargers: bound the cache
        _FAMILY_CACHE[measurand] = found
    return found


def is_energy_register(measurand: str) -> bool:
    return measurand.startswith("Energy.") and measurand.endswith(".Register")


def parse_timestamp(value: object) -> datetime | None:
    """RFC 3339 / ISO 8601 with offset (1.6 §3.15, 2.0.1 Part 2 §2.1.4); naive is read as UTC."""
    if not isinstance(value, str):
        return None
    if value.endswith("z"):  # RFC 3339 §5.6 allows a lower-case "z"; fromisoformat() does not
        value = value[:-1] + "Z"
    try:
        ts = datetime.fromisoformat(value)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return ts.astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        return None


def timestamp_flags(ts: datetime, received_at: datetime) -> int:
    flags = 0
    if ts < EARLIEST_PLAUSIBLE:
        flags |= FLAG_ANCIENT_TIMESTAMP
    if ts > received_at + FUTURE_TOLERANCE:
        flags |= FLAG_FUTURE_TIMESTAMP
    return flags


RAW_TIME_MAX_CHARS = 64
_YEAR = re.compile(r"^\s*(\d{4})-", re.ASCII)


class EventTime(msgspec.Struct, frozen=True, gc=False):
    """The time stored for a charger's timestamp, the data-quality flags and the charger's text."""

    time: datetime
    flags: int = 0
    raw: str = ""     # the charger's timestamp when it was not used (flags say why)


def event_time(value: object, received_at: datetime, *, index: int = 0) -> EventTime:
    """The rule for every timestamp a charger sends (status, sample, transaction, event): a
    timestamp from 2010-01-01 to FUTURE_TOLERANCE after the message was received is used as it
    is. Any other (before 2010, in the future, unreadable or not representable in UTC) is
    replaced by the receive time — when the central system saw the event, the best estimate
    there is — flagged (FLAG_ANCIENT_TIMESTAMP / FLAG_FUTURE_TIMESTAMP; an unreadable one
    FLAG_UNPARSEABLE_VALUE), its text kept. ``index`` µs are added for the index-th of several
    readings of one message, so that they stay distinct and in order. An absent timestamp is the
    receive time, unflagged (the message's own time, e.g. 1.6 StatusNotification.timestamp is
    optional, §7.21)."""
    if value is None:
        return EventTime(received_at)
    ts = parse_timestamp(value)
    if ts is not None:
        flags = timestamp_flags(ts, received_at)
        if not flags:
            return EventTime(ts)
    else:  # not a date-time, or one beyond year 1 … 9999 once moved to UTC
        year = _YEAR.match(value) if isinstance(value, str) else None
        flags = FLAG_UNPARSEABLE_VALUE if year is None else (
            FLAG_ANCIENT_TIMESTAMP if int(year.group(1)) < EARLIEST_PLAUSIBLE.year else FLAG_FUTURE_TIMESTAMP)
    return EventTime(received_at + timedelta(microseconds=index), flags, str(value)[:RAW_TIME_MAX_CHARS])


def _number(raw: object) -> float | None:
    """A finite number from a 1.6 decimal string or a 2.x JSON number (telemetry precision:
    double, ~15 significant digits; billing uses the transactions' meter readings)."""
    if isinstance(raw, str):
        if raw.isascii() and raw.isprintable() and "_" not in raw:
            # What float() reads beyond _DECIMAL here is only nan/inf/infinity, refused below as not finite.
            try:
                value = float(raw)
            except ValueError:
                return None
        elif _DECIMAL.match(raw):  # ASCII whitespace around a decimal (and nothing float() alone would take)
            value = float(raw)
        else:
            return None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    else:
        return None
    return value if math.isfinite(value) else None


class _Plan(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What one (measurand, unit, multiplier) means, computed once (not per sample): the SI unit,
    the scaling, the plausible range and the flags that do not depend on the value."""

    measurand: str
    si_unit: str
    factor: float
    offset: float
    power: float            # 10^|multiplier| (2.0.1 Part 2 §2.2), nan when beyond a double
    divide: bool            # multiplier < 0: value / power (keeps 1234e-1 == 123.4)
    low: float              # plausible SI range of the family (±inf when none)
    high: float
    static_flags: int       # FLAG_IMPLAUSIBLE_UNIT for a unit that does not fit the measurand
    energy_register: bool
    raw_unit: str           # as stored: the charger's unit, with e<multiplier> when scaled


_PLANS: dict[tuple[str | None, str | None, int], _Plan] = {}
_PLANS_MAX = 4096  # keys come from chargers (bounded by the schemas' enums in 1.6, free text in 2.x)


def _plan(measurand: str | None, raw_unit: str | None, multiplier: int) -> _Plan:
    key = (measurand, raw_unit, multiplier)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    name = measurand or DEFAULT_MEASURAND
    family = _family(name)
    unit_in = raw_unit if raw_unit is not None else (family[0] if family else "")
    si_unit, factor, offset = _UNITS.get(unit_in, (unit_in, 1.0, 0.0))
    try:
        power = 10.0 ** abs(multiplier)
    except OverflowError:  # 10.0**multiplier beyond a double: no meter reads that
        power = math.nan
    flags = 0
    low, high = -math.inf, math.inf
    if family is not None:
        _, units, (low, high) = family
        if si_unit not in units:
            flags |= FLAG_IMPLAUSIBLE_UNIT
    elif unit_in and unit_in not in _UNITS:
        flags |= FLAG_IMPLAUSIBLE_UNIT
    plan = _Plan(name, si_unit, factor, offset, power, multiplier < 0, low, high, flags, is_energy_register(name),
                 (unit_in if multiplier == 0 else f"{unit_in}e{multiplier}")[:32])
    if len(_PLANS) < _PLANS_MAX:
        _PLANS[key] = plan
    return plan


def _sample(time: EventTime, raw_value: object, plan: _Plan, phase: str | None, location: str, context: str,
            connector_zero: bool, signed: bool) -> Sample:
    number = None if signed else _number(raw_value)
    flags = time.flags | plan.static_flags
    value = math.nan
    if number is not None:
        scaled = number / plan.power if plan.divide else number * plan.power
        value = scaled * plan.factor + plan.offset
    if not math.isfinite(value):  # unreadable, or too large for a float (e.g. 1.7e308 × 10^3)
        value = math.nan
        flags |= FLAG_UNPARSEABLE_VALUE
    elif not plan.low <= value <= plan.high:
        flags |= FLAG_IMPLAUSIBLE_UNIT
    if connector_zero and plan.energy_register:
        flags |= FLAG_CONNECTOR_ZERO_TOTAL
    raw = raw_value if type(raw_value) is str else str(raw_value)
    return Sample(time.time, plan.measurand, phase or "", location, context, value, plan.si_unit,
                  raw if len(raw) <= 64 else raw[:64], plan.raw_unit, flags, time.raw)


def make_sample(*, time: datetime | EventTime, received_at: datetime, raw_value: object, raw_unit: str | None,
                multiplier: int, measurand: str | None, phase: str | None, location: str | None,
                context: str | None, connector_zero: bool, signed: bool = False) -> Sample:
    """One normalised sample; never raises, flags what it cannot make sense of. ``time`` is the
    charger's timestamp (the rule of :func:`event_time` is applied) or an :class:`EventTime`."""
    if not isinstance(time, EventTime):
        time = event_time(time.isoformat(), received_at) if timestamp_flags(time, received_at) else EventTime(time)
    return _sample(time, raw_value, _plan(measurand, raw_unit, multiplier), phase, location or "", context or "",
                   connector_zero, signed)


def samples_v16(meter_values: list[dict[str, Any]], *, received_at: datetime, connector_id: int) -> list[Sample]:
    """1.6 MeterValue[] (MeterValues.meterValue or StopTransaction.transactionData)."""
    out: list[Sample] = []
    zero = connector_id == 0
    for index, mv in enumerate(meter_values):
        ts = event_time(mv.get("timestamp"), received_at, index=index)
        for sv in mv.get("sampledValue", ()):
            get = sv.get
            out.append(_sample(ts, get("value"), _plan(get("measurand"), get("unit"), 0), get("phase"),
                               get("location") or "Outlet", get("context") or "Sample.Periodic", zero,
                               get("format") == "SignedData"))
    return out


def samples_v201(meter_values: list[dict[str, Any]], *, received_at: datetime, evse_id: int) -> list[Sample]:
    """2.0.1/2.1 MeterValueType[] (MeterValues.meterValue or TransactionEvent.meterValue)."""
    out: list[Sample] = []
    zero = evse_id == 0
    for index, mv in enumerate(meter_values):
        ts = event_time(mv.get("timestamp"), received_at, index=index)
        for sv in mv.get("sampledValue", ()):
            get = sv.get
            uom = get("unitOfMeasure") or {}
            multiplier = uom.get("multiplier", 0)
            if not (type(multiplier) is int and -20 <= multiplier <= 20):  # bool is no multiplier
                multiplier = 0
            out.append(_sample(ts, get("value"), _plan(get("measurand"), uom.get("unit"), multiplier),
                               get("phase"), get("location") or "Outlet", get("context") or "Sample.Periodic", zero,
                               False))
    return out


def register_reading(samples: list[Sample], *, context: str | None = None) -> float | None:
    """The Energy.Active.Import.Register value (Wh) among samples, optionally of one context."""
    for s in samples:
        if (s.measurand == DEFAULT_MEASURAND and s.phase == "" and not math.isnan(s.value)
                and (context is None or s.context == context)):
            return s.value
    return None


_NO_REFERENCE = FLAG_IMPLAUSIBLE_UNIT | FLAG_UNPARSEABLE_VALUE | FLAG_FUTURE_TIMESTAMP | FLAG_ANCIENT_TIMESTAMP


@dataclass
class RegisterTracker:
    """Flags energy registers that go backwards, per EVSE/connector/measurand/phase (J02.FR.16)."""

    last: dict[tuple[int, int, str, str], tuple[datetime, float]] = field(default_factory=dict)

    def check(self, evse_id: int, connector_id: int, samples: list[Sample]) -> list[Sample]:
        out = []
        for s in samples:
            # A reading already known to be wrong (unit, magnitude, clock) is no reference for the next.
            if is_energy_register(s.measurand) and not math.isnan(s.value) and not s.flags & _NO_REFERENCE:
                key = (evse_id, connector_id, s.measurand, s.phase)
                prev = self.last.get(key)
                if prev is not None and s.time > prev[0] and s.value < prev[1]:
                    s = msgspec.structs.replace(s, flags=s.flags | FLAG_REGISTER_DECREASED)
                if prev is None or s.time >= prev[0]:
                    self.last[key] = (s.time, s.value)
                if len(self.last) > 256:  # bounded per connection
                    self.last.pop(next(iter(self.last)))
            out.append(s)
        return out


def flag_outside_window(samples: list[Sample], start: datetime | None, stop: datetime | None) -> list[Sample]:
    """Flag samples taken before their transaction started or after it stopped."""
    if start is None and stop is None:
        return samples
    out = []
    for s in samples:
        if (start is not None and s.time < start) or (stop is not None and s.time > stop):
            s = msgspec.structs.replace(s, flags=s.flags | FLAG_OUTSIDE_TRANSACTION)
        out.append(s)
    return out
