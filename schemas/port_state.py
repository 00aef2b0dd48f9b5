"""Port state minutes: what utilization reports count, computed one way for both sides.

Definitions (reporting.md §5.4): a port (EVSE) is *occupied* while its connector status is
one of ``OCCUPIED`` (OCPP 1.6 Preparing, Charging, SuspendedEV, SuspendedEVSE, Finishing;
OCPP 2.0.1 Occupied) and *charging* while 1.6 reports Charging or a 2.0.1 transaction on it
last reported chargingState Charging (2.0.1 has no Charging connector status, Part 2
§E TransactionEvent). A state lasts until the next row; the last one lasts until the end of
the window. A 2.0.1 transaction stops charging at its Ended event.

Energy (:func:`session_energy`) is the energy that flowed in each quarter hour: per transaction,
the points meterStart at its start, its trusted Energy.Active.Import.Register samples and
meterStop at its stop; a reading below an earlier one is held at the earlier value (running
maximum), and each difference between consecutive points is spread linearly over the time between
them (linear interpolation of the register). A session without samples spreads meterStop −
meterStart over its duration; one still open counts up to its latest point. Samples flagged as
untrusted (:data:`UNTRUSTED_REGISTER_FLAGS`) do not count. A session's energy counts in its first
``LOOKBACK`` only (a session whose stop never came must not be read for ever).

The ingest side rolls these up into ``port_state_15m`` and ``port_occupancy_spans``; the
reports compute the not-yet-rolled-up remainder with the same functions, so both agree.
Interpolation looks ahead (a step's end may arrive after the roll-up ran), so the point from
which a port must be recomputed is moved back to the start of any session running there
(``schemas.port_state_read.settled_cuts``). Reading the rows these functions take:
``schemas.port_state_read``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from schemas.events import (
    FLAG_ANCIENT_TIMESTAMP,
    FLAG_CONNECTOR_ZERO_TOTAL,
    FLAG_FUTURE_TIMESTAMP,
    FLAG_IMPLAUSIBLE_UNIT,
    FLAG_OUTSIDE_TRANSACTION,
    FLAG_REGISTER_DECREASED,
    FLAG_UNPARSEABLE_VALUE,
)
from schemas.intervals import Interval, intersect, merge

BUCKET = timedelta(minutes=15)
# An occupancy longer than this is not looked back for: its start is cut here.
LOOKBACK = timedelta(days=7)
OCCUPIED = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"})
# Session success (reporting.md §5.4): at least min_success_kwh = 0.5 and none of these stop reasons.
MIN_SUCCESS_WH = 500
FAILED_STOP_REASONS = frozenset({"EmergencyStop", "PowerLoss", "HardReset", "SoftReset", "Reboot", "GroundFault",
                                 "OvercurrentFault", "PowerQuality"})
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Rows before this are implausible (the data-quality rule, csms/ocpp/normalise.py): no
# arithmetic starts before it, so a stray year-1 row cannot push a computation out of range.
EARLIEST = datetime(2010, 1, 1, tzinfo=UTC)
ENERGY_MEASURAND = "Energy.Active.Import.Register"
# India's solar hours, station-local [09:00, 16:00) (MoP EV charging guidelines 2024, reporting.md §4.1):
# the roll-up keeps each day's energy in them (port_state_day.energy_solar_wh). On quarter hours in
# every zone in use, so a quarter hour is wholly inside or outside them.
SOLAR_HOURS = (time(9, 0), time(16, 0))
# Register samples that are not trusted as readings of the session's energy.
UNTRUSTED_REGISTER_FLAGS = (FLAG_REGISTER_DECREASED | FLAG_OUTSIDE_TRANSACTION | FLAG_FUTURE_TIMESTAMP
                            | FLAG_ANCIENT_TIMESTAMP | FLAG_IMPLAUSIBLE_UNIT | FLAG_CONNECTOR_ZERO_TOTAL
                            | FLAG_UNPARSEABLE_VALUE)

PortKey = tuple[str, int]

# Per-session figures of the bulk session exports (the sessions CSV, EV-ChART module 2), as SQL
# aggregates over a session's samples ``m`` inside [its start, its stop]: the highest phase-less
# Power.Active.Import sample (W), and the first and the last trusted phase-less SoC sample (%) — a
# hash aggregate cannot order, so min/max of (epoch, value) pairs pick them (the lower value at equal
# times). The roll-up keeps them per finished session (``session_summary``, migration 0008) and the
# exports compute them for the sessions the roll-up has not settled, with this same text.
POWER_MEASURAND = "Power.Active.Import"
SOC_MEASURAND = "SoC"
SESSION_FIGURES_SQL = f"""
    max(m.value) FILTER (WHERE m.measurand = '{POWER_MEASURAND}') AS peak_power_w,
    (min(ARRAY[extract(epoch FROM m.time)::float8, m.value])
        FILTER (WHERE m.measurand = '{SOC_MEASURAND}' AND m.quality_flags & {UNTRUSTED_REGISTER_FLAGS} = 0))[2]
        AS start_soc,
    (max(ARRAY[extract(epoch FROM m.time)::float8, m.value])
        FILTER (WHERE m.measurand = '{SOC_MEASURAND}' AND m.quality_flags & {UNTRUSTED_REGISTER_FLAGS} = 0))[2]
        AS end_soc"""
# The samples those aggregates read (besides the session's own key and time span).
SESSION_FIGURES_SAMPLES_SQL = f"m.measurand IN ('{POWER_MEASURAND}', '{SOC_MEASURAND}') AND m.phase = ''"
# A session's samples of these measurands feed the roll-up (energy per quarter hour, the session's
# figures): the writer marks the port dirty from the earliest of them it stores.
ROLLED_MEASURANDS = frozenset({ENERGY_MEASURAND, POWER_MEASURAND, SOC_MEASURAND})


def floor_bucket(moment: datetime) -> datetime:
    """Start of the 15-minute bucket holding ``moment`` (aligned in every zone in use)."""
    return moment - (moment - _EPOCH) % BUCKET


def ceil_bucket(moment: datetime) -> datetime:
    start = floor_bucket(moment)
    return start if start == moment else start + BUCKET


@dataclass(frozen=True, slots=True)
class TxEvent:
    time: datetime
    charging_state: str | None     # None: not reported in this event, the previous one holds
    ended: bool


@dataclass(frozen=True, slots=True)
class MeteredSession:
    """One transaction's energy points: meterStart/meterStop and its trusted register samples."""

    started_at: datetime
    stopped_at: datetime | None          # None while open
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    readings: Sequence[tuple[datetime, float]] = ()   # (time, Wh), any order


@dataclass(frozen=True, slots=True)
class PortHistory:
    """Rows of one port from ``read_from`` on, the first being the status in force then."""

    statuses: Sequence[tuple[datetime, str]]
    transactions: Sequence[Sequence[TxEvent]] = ()
    sessions: Sequence[MeteredSession] = ()


@dataclass(frozen=True, slots=True)
class Span:
    """One occupancy, plug-in to plug-out."""

    started_at: datetime
    ended_at: datetime
    charging_s: float
    post_charge_idle_s: float | None


@dataclass(slots=True)
class PortMinutes:
    buckets: dict[datetime, tuple[float, float]] = field(default_factory=dict)  # start → (occupied_s, charging_s)
    spans: list[Span] = field(default_factory=list)
    energy: dict[datetime, float] = field(default_factory=dict)                 # start → Wh that flowed


Step = tuple[datetime, datetime, float]   # (t0, t1, Wh) spread uniformly over [t0, t1)


def register_steps(session: MeteredSession) -> list[Step]:
    """The session's register differences, never negative, adding up to its energy.

    Points: meterStart at the start, the readings inside [start, stop] that lie between
    meterStart and meterStop (when known), meterStop at the stop (a stop before the start,
    a charger's clock, is taken as the start). Ordered by (time, value); a reading below an
    earlier one is held at the earlier value, so the steps sum to meterStop − meterStart (0
    if negative)."""
    start = session.started_at
    stop = max(start, session.stopped_at) if session.stopped_at is not None else None
    low, high = session.meter_start_wh, session.meter_stop_wh
    points: list[tuple[datetime, float]] = []
    if low is not None:
        points.append((start, low))
    for moment, value in session.readings:
        if moment < start or (stop is not None and moment > stop) or value != value:   # NaN
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            continue
        points.append((moment, value))
    if stop is not None and high is not None:
        points.append((stop, high))
    points.sort()
    steps: list[Step] = []
    level: float | None = None
    previous = start
    for moment, value in points:
        if level is not None and value > level:
            steps.append((previous, moment, value - level))
        level = value if level is None else max(level, value)
        previous = moment
    return steps


# Bucket arithmetic in integer microseconds since _EPOCH: the same instants and, piece by piece, the
# same floats as timedelta arithmetic (timedelta.total_seconds() is microseconds / 10**6), several
# times faster; keys become datetimes once per bucket.
_US = timedelta(microseconds=1)
_BUCKET_US = BUCKET // _US
_US_PER_S = 1_000_000


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


_AT: dict[int, datetime] = {}   # bucket starts already made (ports share them); bounded below
_AT_MAX = 200_000


def _at(us: int) -> datetime:
    moment = _AT.get(us)
    if moment is None:
        if len(_AT) >= _AT_MAX:
            _AT.clear()
        moment = _AT[us] = _EPOCH + timedelta(microseconds=us)
    return moment


def _spread(steps: Iterable[Step], window: Interval, out: dict[int, float]) -> None:
    w0, w1 = _us(window[0]), _us(window[1])
    for t0, t1, wh in steps:
        a, b = _us(t0), _us(t1)
        if a == b:
            if w0 <= a < w1:
                bucket = a - a % _BUCKET_US
                out[bucket] = out.get(bucket, 0.0) + wh
            continue
        cursor, hi = max(a, w0), min(b, w1)
        span = (b - a) / _US_PER_S
        bucket = cursor - cursor % _BUCKET_US
        while cursor < hi:   # bounded: one pass per quarter hour of the clipped step
            stop = bucket + _BUCKET_US
            if stop > hi:
                stop = hi
            out[bucket] = out.get(bucket, 0.0) + wh * ((stop - cursor) / _US_PER_S) / span
            cursor = stop
            bucket += _BUCKET_US


def spread(steps: Iterable[Step], window: Interval, out: dict[datetime, float] | None = None) -> dict[datetime, float]:
    """Wh of each step that flowed inside ``window``, per 15-minute bucket (linear in time; an
    instantaneous step belongs to its instant)."""
    out = {} if out is None else out
    found: dict[int, float] = {_us(k): v for k, v in out.items()}
    _spread(steps, window, found)
    out.clear()
    out.update((_at(k), v) for k, v in found.items())
    return out


def session_energy(sessions: Iterable[MeteredSession], window: Interval) -> dict[datetime, float]:
    """Wh per 15-minute bucket inside ``window`` over the sessions; each session counts in
    [its start, its start + LOOKBACK) only, whatever the window (so every window agrees)."""
    out: dict[int, float] = {}
    for session in sessions:
        horizon = (max(window[0], session.started_at), min(window[1], session.started_at + LOOKBACK))
        if horizon[0] < horizon[1]:
            _spread(register_steps(session), horizon, out)
    return {_at(k): v for k, v in sorted(out.items())}


def _state_spans(rows: Sequence[tuple[datetime, str]], wanted: frozenset[str], until: datetime) -> list[Interval]:
    out: list[Interval] = []
    if not rows:
        return out
    for (moment, state), nxt in zip(rows, [*rows[1:], None], strict=True):
        end = nxt[0] if nxt is not None else until
        if state in wanted:
            out.append((moment, min(end, until)))
    return merge(out)


def _tx_charging(events: Sequence[TxEvent], until: datetime) -> list[Interval]:
    carried: list[tuple[datetime, str]] = []
    state = ""
    for event in events:
        state = event.charging_state or state
        carried.append((event.time, "" if event.ended else state))
    return _state_spans(carried, frozenset({"Charging"}), until)


def occupied_and_charging(history: PortHistory, until: datetime) -> tuple[list[Interval], list[Interval]]:
    occupied = _state_spans(history.statuses, OCCUPIED, until)
    charging = _state_spans(history.statuses, frozenset({"Charging"}), until)
    for events in history.transactions:
        charging.extend(_tx_charging(events, until))
    return occupied, merge(charging)


def _add_to_buckets(out: dict[int, list[float]], intervals: Iterable[Interval], index: int) -> None:
    for start, end in intervals:
        cursor, until = _us(start), _us(end)
        bucket = cursor - cursor % _BUCKET_US
        while cursor < until:
            stop = bucket + _BUCKET_US
            if stop > until:
                stop = until
            slot = out.get(bucket)
            if slot is None:
                slot = out[bucket] = [0.0, 0.0]
            slot[index] += (stop - cursor) / _US_PER_S
            cursor = stop
            bucket += _BUCKET_US


def port_minutes(history: PortHistory, window: Interval) -> PortMinutes:
    """Occupied and charging seconds per 15-minute bucket inside ``window``, and the
    occupancies that ended inside it (an occupancy still open at the window's end is not one)."""
    occupied, charging = occupied_and_charging(history, window[1])
    sums: dict[int, list[float]] = {}
    _add_to_buckets(sums, intersect(occupied, [window]), 0)
    _add_to_buckets(sums, intersect(charging, [window]), 1)
    result = PortMinutes(buckets={_at(b): (v[0], v[1]) for b, v in sorted(sums.items())})
    j = 0   # both lists are sorted and disjoint: one pass over the charging intervals
    for start, end in occupied:
        while j < len(charging) and charging[j][1] <= start:
            j += 1
        if not window[0] <= end < window[1]:
            continue
        charged = 0.0
        last_charge: datetime | None = None
        k = j
        while k < len(charging) and charging[k][0] < end:
            s, e = max(charging[k][0], start), min(charging[k][1], end)
            if e > s:
                charged += (e - s).total_seconds()
                last_charge = e
            k += 1
        idle = (end - last_charge).total_seconds() if last_charge is not None else None
        result.spans.append(Span(start, end, charged, idle))
    result.energy = session_energy(history.sessions, window)
    return result
