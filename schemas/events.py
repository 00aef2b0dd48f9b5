"""Version-neutral bus events (schema version 1).

The central system turns each data-carrying OCPP message into these events; the
ingest worker writes them to TimescaleDB. They are msgspec structs: typed, frozen,
and encoded compactly (MessagePack on MQTT, see ``schemas/BUS.md``). Values are
already normalised to SI units (Wh, W, A, V, Percent, Celsius, Hz ...).

Compatibility rule: within schema version 1, fields are only ever *added*, at the
end, with a default, so an older worker can decode a newer producer's events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

# Data-quality flags stored with samples and transactions (bit set), counted in metrics.
FLAG_REGISTER_DECREASED = 1 << 0      # energy register went backwards
FLAG_OUTSIDE_TRANSACTION = 1 << 1     # sample outside its transaction's window
FLAG_FUTURE_TIMESTAMP = 1 << 2        # timestamp later than the receive time (beyond tolerance)
FLAG_ANCIENT_TIMESTAMP = 1 << 3       # timestamp before 2010
FLAG_METER_STOP_BELOW_START = 1 << 4  # meterStop < meterStart
FLAG_IMPLAUSIBLE_UNIT = 1 << 5        # unit unknown for the measurand, or magnitude implausible
FLAG_CONNECTOR_ZERO_TOTAL = 1 << 6    # connector 0: station main meter, not a session's energy
FLAG_SCHEMA_TOLERATED = 1 << 7        # message failed schema validation, accepted in tolerant mode
FLAG_UNPARSEABLE_VALUE = 1 << 8       # value could not be read as a number (kept raw)
# 1.6 StopTransaction/MeterValues for a transactionId the CSMS does not know (-1, errata 3.18, or
# an id never given to this charger): its own session, never merged into a known one; a stop
# names no connector in 1.6, so the session's connector is unknown (NULL).
FLAG_UNKNOWN_TRANSACTION = 1 << 9

QUALITY_FLAG_NAMES: dict[int, str] = {
    FLAG_UNKNOWN_TRANSACTION: "unknown_transaction",
    FLAG_REGISTER_DECREASED: "register_decreased",
    FLAG_OUTSIDE_TRANSACTION: "outside_transaction",
    FLAG_FUTURE_TIMESTAMP: "future_timestamp",
    FLAG_ANCIENT_TIMESTAMP: "ancient_timestamp",
    FLAG_METER_STOP_BELOW_START: "meter_stop_below_start",
    FLAG_IMPLAUSIBLE_UNIT: "implausible_unit",
    FLAG_CONNECTOR_ZERO_TOTAL: "connector_zero_total",
    FLAG_SCHEMA_TOLERATED: "schema_tolerated",
    FLAG_UNPARSEABLE_VALUE: "unparseable_value",
}


class _Event(msgspec.Struct, frozen=True, tag_field="t", omit_defaults=True):
    """Common base: every event names its charge point and when the CSMS received it."""

    charge_point_id: str
    received_at: datetime


class ConnectionEvent(_Event, frozen=True, tag="conn"):
    """Websocket connected / disconnected, or a BootNotification (``event='boot'``)."""

    time: datetime
    event: Literal["connected", "disconnected", "boot"]
    reason: str = ""
    node_id: str = ""
    ocpp_version: str = ""
    # boot: vendor, model, serial_number, firmware_version, registration_status.
    detail: dict[str, str] | None = None
    # connected/disconnected: the charger's connection epoch, allocated by the database for each
    # admitted websocket (higher = newer). A "disconnected" of a lower epoch than the charger's
    # latest "connected" is a replaced socket closing late and does not make the charger offline.
    # None: events of producers from before epochs existed.
    connection_epoch: int | None = None


class StatusEvent(_Event, frozen=True, tag="status"):
    """A connector status change (StatusNotification, NotifyEvent AvailabilityState)."""

    time: datetime
    evse_id: int
    connector_id: int
    status: str
    error_code: str = ""
    vendor_id: str = ""
    vendor_error_code: str = ""
    info: str = ""
    # Data-quality flags (FLAG_*_TIMESTAMP): an implausible timestamp is replaced by received_at,
    # the charger's text kept in raw_time (csms/ocpp/normalise.py event_time).
    flags: int = 0
    raw_time: str = ""


class Sample(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One sampled value, normalised (``value`` in ``unit``), with the raw text kept.

    ``gc=False``: its fields are scalars, so it can be in no reference cycle, and the collector need
    not track the ten a MeterValues makes (msgspec docs, "Disabling Garbage Collection")."""

    time: datetime
    measurand: str
    phase: str
    location: str
    context: str
    value: float
    unit: str
    raw_value: str
    raw_unit: str
    flags: int = 0
    raw_time: str = ""  # the charger's timestamp when it was implausible and replaced (flags say why)


class MeterEvent(_Event, frozen=True, tag="meter"):
    """Samples of one MeterValues request or transaction message, on one EVSE/connector."""

    evse_id: int
    connector_id: int
    transaction_uid: str  # '' when the sample belongs to no transaction
    samples: list[Sample]


class TransactionEvent(_Event, frozen=True, tag="tx"):
    """A change to one transaction (1.6 Start/Stop, 2.0.1 TransactionEvent).

    Writes are merges: set-once fields (start, stop) keep the first value seen, so
    Stop before Start, or Ended before Started, still ends as one correct session.
    """

    transaction_uid: str
    time: datetime
    kind: Literal["started", "updated", "ended"]
    ocpp16_transaction_id: int | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    stop_reason: str | None = None
    stop_id_token: str | None = None
    charging_state: str | None = None
    remote_start_id: int | None = None
    seq_no: int | None = None
    trigger_reason: str | None = None
    offline: bool = False
    flags: int = 0


class LogEvent(_Event, frozen=True, tag="log"):
    """Any other charger message worth keeping (firmware/diagnostics/log status, security
    events, DataTransfer, NotifyReport, NotifyEvent ...), stored as JSON."""

    time: datetime
    action: str
    payload: dict[str, Any]
    digest: str  # hash of the payload: a retried message is stored once


# ---- OCPP 2.1 (issue 14 item 1): what the 2.1-only charger messages carry (migration 0011). Every event
# below carries the digest of its message's payload (or the message id) in its natural key, so a retried
# message is stored once.


class SettlementEvent(_Event, frozen=True, tag="settlement"):
    """A payment terminal's settlement (2.1 NotifySettlement; Part 2 C18/C21/C22/C24), linked to its
    transaction when the charger names one ('' otherwise)."""

    time: datetime                       # settlementTime
    psp_ref: str
    status: str                          # Settled, Canceled, Rejected, Failed
    amount: float                        # settlementAmount, in the tariff's currency
    digest: str
    transaction_uid: str = ""
    status_info: str = ""
    receipt_id: str = ""
    receipt_url: str = ""
    vat_number: str = ""
    vat_company: dict[str, str] | None = None


class DerEvent(_Event, frozen=True, tag="der"):
    """A DER message (2.1 Part 2 R04/R05): an alarm (NotifyDERAlarm), a control started or stopped
    (NotifyDERStartStop) or a report of the controls set (ReportDERControl, one event per message part)."""

    time: datetime                       # the message's timestamp; a report has none: the receive time
    kind: Literal["alarm", "start_stop", "report"]
    digest: str
    control_type: str = ""               # alarm: DERControlEnumType
    grid_event_fault: str = ""           # alarm
    alarm_ended: bool | None = None      # alarm
    extra_info: str = ""                 # alarm
    control_id: str = ""                 # start_stop
    started: bool | None = None          # start_stop
    superseded_ids: list[str] = []       # start_stop
    request_id: int | None = None        # report
    tbc: bool = False                    # report: more parts follow
    detail: dict[str, Any] | None = None  # report: the controls, as sent


class PeriodicStreamEvent(_Event, frozen=True, tag="stream"):
    """A periodic event stream opened or closed by the charger (2.1 Open/ClosePeriodicEventStream; N11, N13)."""

    time: datetime                       # the receive time (the messages carry none)
    stream_id: int
    kind: Literal["open", "close"]
    variable_monitoring_id: int | None = None
    interval_s: int | None = None
    values: int | None = None


class StreamValue(msgspec.Struct, frozen=True, array_like=True):
    """One value of a NotifyPeriodicEventStream: basetime + t, the value as sent and as a number if it is one."""

    seq: int                             # position in its message
    time: datetime
    raw_value: str
    value: float | None = None


class StreamDataEvent(_Event, frozen=True, tag="streamdata"):
    """The data of one 2.1 NotifyPeriodicEventStream SEND (N15), stored like meter samples."""

    stream_id: int
    basetime: datetime
    pending: int
    values: list[StreamValue]


class SwappedBattery(msgspec.Struct, frozen=True, array_like=True):
    evse_id: int
    serial_number: str
    soc: float
    soh: float
    production_date: datetime | None = None
    vendor_info: str = ""


class BatterySwapEvent(_Event, frozen=True, tag="swap"):
    """Batteries swapped in or out (2.1 BatterySwap; Part 2 S03)."""

    request_id: int
    event_type: str                      # BatteryIn, BatteryOut, BatteryOutTimeout
    id_token: str
    id_token_type: str
    digest: str
    batteries: list[SwappedBattery]


class PriorityChargingEvent(_Event, frozen=True, tag="priority"):
    """Priority charging activated or ended for a transaction (2.1 NotifyPriorityCharging). The message
    has no timestamp: a retry is recognised by its message id (2.1 Part 4 §4.1.4 lets a retry reuse it)."""

    transaction_uid: str
    activated: bool
    message_id: str


Event = (ConnectionEvent | StatusEvent | MeterEvent | TransactionEvent | LogEvent | SettlementEvent | DerEvent
         | PeriodicStreamEvent | StreamDataEvent | BatterySwapEvent | PriorityChargingEvent)


class EventBatch(msgspec.Struct, frozen=True):
    """What travels in one bus message: a node's events with its outbox sequence range."""

    schema_version: int
    node_id: str
    first_seq: int
    events: list[Event]
    # When the CSMS received the oldest message in the batch (end-to-end lag metric).
    oldest_received_at: datetime | None = None


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(EventBatch)
# A bus message is one batch (a map) or a bundle of batches (an array of maps): schemas/BUS.md.
_MESSAGE_DECODER = msgspec.msgpack.Decoder(EventBatch | list[EventBatch])


def encode_batch(batch: EventBatch) -> bytes:
    return _ENCODER.encode(batch)


def decode_batch(data: bytes) -> EventBatch:
    """Decode one encoded batch; raises ``msgspec.DecodeError``/``ValidationError`` if malformed."""
    return _DECODER.decode(data)


def encode_bundle(encoded_batches: list[bytes]) -> bytes:
    """Several already encoded batches as one bus message, without decoding them again."""
    return _ENCODER.encode([msgspec.Raw(b) for b in encoded_batches])


def decode_message(data: bytes) -> list[EventBatch]:
    """Decode a bus message (a batch or a bundle); raises ``msgspec.DecodeError``/``ValidationError``."""
    decoded = _MESSAGE_DECODER.decode(data)
    return decoded if isinstance(decoded, list) else [decoded]


def count_rows(events: list[Event]) -> int:
    """Rows an event list turns into (meter events count one per sample)."""
    return sum(len(e.samples) if isinstance(e, MeterEvent) else len(e.values) if isinstance(e, StreamDataEvent)
               else 1 for e in events)
