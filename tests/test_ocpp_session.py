"""Unit tests of OcppSession.handle_call with the handlers of 1.6, 2.0.1 and 2.1 (no socket, no database).

``MemoryServices`` is an in-memory test double of the registry interface (``csms.ocpp.context.Services``).
Every session validates the responses it produces against the official response schema
(``validate_responses=True``), and ``result()`` checks them once more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pytest

from csms.ocpp import coverage, handlers_v16, handlers_v21, handlers_v21_only, handlers_v201
from csms.ocpp.context import (
    BootDecision,
    BootInfo,
    ProtocolState,
    RegistrationStatus,
    TokenDecision,
)
from csms.ocpp.framing import Call, parse_frame
from csms.ocpp.session import HANDLERS, CallOutcome, OcppSession
from csms.ocpp.types import ChargePointId, IdToken, ocpp_version
from csms.ocpp.validation import known_actions, load_schema, validate
from schemas.events import (
    FLAG_CONNECTOR_ZERO_TOTAL,
    FLAG_METER_STOP_BELOW_START,
    FLAG_UNKNOWN_TRANSACTION,
    ConnectionEvent,
    Event,
    LogEvent,
    MeterEvent,
    StatusEvent,
    TransactionEvent,
)

CP = ChargePointId("CP-TEST-1")
BOTH = ("1.6", "2.0.1")
ALL = ("1.6", "2.0.1", "2.1")
CURRENT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$")
E = TypeVar("E", ConnectionEvent, StatusEvent, MeterEvent, TransactionEvent, LogEvent)


class MemoryServices:
    """In-memory registry: boot decisions, a token table and the 1.6 transaction-id allocator."""

    def __init__(self, *, boot_status: RegistrationStatus = "Accepted", interval_s: int = 300,
                 tokens: Mapping[str, TokenDecision] | None = None) -> None:
        self.boot_status: RegistrationStatus = boot_status
        self.interval_s = interval_s
        self.tokens: dict[str, TokenDecision] = dict(tokens or {"GOOD": TokenDecision("Accepted")})
        self.boots: list[tuple[ChargePointId, BootInfo]] = []
        self.authorized: list[str] = []
        self.tx_ids: dict[tuple[ChargePointId, str], int] = {}
        self.next_tx_id = 1000

    async def boot(self, charge_point_id: ChargePointId, info: BootInfo) -> BootDecision:
        self.boots.append((charge_point_id, info))
        return BootDecision(self.boot_status, self.interval_s)

    async def authorize(self, charge_point_id: ChargePointId, id_token: IdToken) -> TokenDecision:
        self.authorized.append(id_token)
        return self.tokens.get(id_token, TokenDecision("Invalid"))

    async def open_transactions(self, charge_point_id: ChargePointId) -> dict[str, tuple[int, int | None]]:
        return {}

    async def allocate_transaction_id(self, charge_point_id: ChargePointId, start_key: str) -> int:
        key = (charge_point_id, start_key)
        if key not in self.tx_ids:
            self.next_tx_id += 1
            self.tx_ids[key] = self.next_tx_id
        return self.tx_ids[key]

    async def transaction_start_key(self, charge_point_id: ChargePointId, transaction_id: int) -> str | None:
        return next((key for (cp, key), tx in self.tx_ids.items() if cp == charge_point_id and tx == transaction_id),
                    None)


def new_session(version: str, *, registration: RegistrationStatus = "Accepted", tolerant: bool = False,
                services: MemoryServices | None = None) -> OcppSession:
    state = ProtocolState(charge_point_id=CP, version=ocpp_version(version), registration=registration,
                          tolerant=tolerant, node_id="node-a")
    return OcppSession(state=state, services=services or MemoryServices(), validate_responses=True)


_counter = 0


async def call(session: OcppSession, action: str, payload: dict[str, Any],
               received_at: datetime | None = None) -> CallOutcome:
    global _counter
    _counter += 1
    return await session.handle_call(Call(f"msg-{_counter}", action, payload), received_at or datetime.now(UTC))


def frame_of(outcome: CallOutcome) -> list[Any]:
    frame = orjson.loads(outcome.frame)
    assert isinstance(frame, list)
    return frame


def result(outcome: CallOutcome, version: str) -> dict[str, Any]:
    """The CALLRESULT payload, checked against the response schema of ``version``."""
    frame = frame_of(outcome)
    assert frame[0] == 3, frame
    assert len(frame) == 3
    assert outcome.error_code is None
    payload = frame[2]
    assert isinstance(payload, dict)
    validate(version, outcome.action, payload, response=True)
    return payload


def error(outcome: CallOutcome, version: str) -> str:
    """The canonical error code of a CALLERROR outcome, after checking the wire spelling and shape."""
    frame = frame_of(outcome)
    assert frame[0] == 4, frame
    assert len(frame) == 5
    assert isinstance(frame[3], str)
    assert len(frame[3]) <= 255
    assert isinstance(frame[4], dict)
    assert outcome.error_code is not None
    assert outcome.events == []
    spelled = {"FormatViolation": "FormationViolation",
               "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}
    expected_wire = spelled.get(outcome.error_code, outcome.error_code) if version == "1.6" else outcome.error_code
    assert frame[2] == expected_wire
    return outcome.error_code


def only(events: list[Event], kind: type[E]) -> E:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def boot_payload(version: str) -> dict[str, Any]:
    if version == "1.6":
        return {"chargePointVendor": "Acme", "chargePointModel": "Fast-1", "chargePointSerialNumber": "SN-1",
                "firmwareVersion": "1.2.3"}
    return {"reason": "PowerUp", "chargingStation": {"vendorName": "Acme", "model": "Fast-1", "serialNumber": "SN-1",
                                                     "firmwareVersion": "1.2.3"}}


def start_payload(ts: str, *, connector: int = 1, id_tag: str = "GOOD", meter_start: int = 1000) -> dict[str, Any]:
    return {"connectorId": connector, "idTag": id_tag, "meterStart": meter_start, "timestamp": ts}


def tx_event(event_type: str, seq_no: int, ts: str, tx_id: str = "tx-1", **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"eventType": event_type, "timestamp": ts, "seqNo": seq_no,
                               "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic",
                                                 "Ended": "EVDeparted"}[event_type],
                               "transactionInfo": {"transactionId": tx_id}}
    payload.update(extra)
    return payload


def energy(value: float, ts: str, context: str) -> dict[str, Any]:
    return {"timestamp": ts, "sampledValue": [{"value": value, "context": context,
                                               "measurand": "Energy.Active.Import.Register",
                                               "unitOfMeasure": {"unit": "Wh"}}]}


# --- BootNotification -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(("status", "interval"), [("Accepted", 300), ("Pending", 60), ("Rejected", 0)])
async def test_boot_notification(version: str, status: RegistrationStatus, interval: int) -> None:
    services = MemoryServices(boot_status=status, interval_s=interval)
    session = new_session(version, registration="Pending", services=services)
    outcome = await call(session, "BootNotification", boot_payload(version))
    payload = result(outcome, version)
    assert payload["status"] == status
    assert payload["interval"] == interval
    assert CURRENT_TIME.match(payload["currentTime"]), payload["currentTime"]
    sent = datetime.fromisoformat(payload["currentTime"])
    assert abs(sent - datetime.now(UTC)) < timedelta(seconds=5)
    assert session.state.registration == status
    [(cp, info)] = services.boots
    assert cp == CP
    assert (info.vendor, info.model, info.serial_number, info.firmware_version) == ("Acme", "Fast-1", "SN-1", "1.2.3")
    event = only(outcome.events, ConnectionEvent)
    assert event.event == "boot"
    assert event.ocpp_version == version
    assert event.node_id == "node-a"
    assert event.detail is not None
    assert event.detail["registration_status"] == status
    assert event.detail["vendor"] == "Acme"


@pytest.mark.parametrize("version", BOTH)
async def test_boot_notification_clears_a_triggered_boot(version: str) -> None:
    session = new_session(version, registration="Pending")
    session.state.triggered["BootNotification"] = None
    result(await call(session, "BootNotification", boot_payload(version)), version)
    assert "BootNotification" not in session.state.triggered


@pytest.mark.parametrize("version", BOTH)
@pytest.mark.parametrize("registration", ["Pending", "Rejected"])
async def test_calls_before_accepted_are_security_error(version: str, registration: RegistrationStatus) -> None:
    session = new_session(version, registration=registration)
    assert error(await call(session, "Heartbeat", {}), version) == "SecurityError"
    # Checked before the schema: an invalid Heartbeat is still a SecurityError.
    assert error(await call(session, "Heartbeat", {"bogus": 1}), version) == "SecurityError"


@pytest.mark.parametrize("version", BOTH)
async def test_pending_then_accepted_boot_unlocks_other_calls(version: str) -> None:
    services = MemoryServices(boot_status="Pending")
    session = new_session(version, registration="Pending", services=services)
    result(await call(session, "BootNotification", boot_payload(version)), version)
    assert error(await call(session, "Heartbeat", {}), version) == "SecurityError"
    services.boot_status = "Accepted"
    result(await call(session, "BootNotification", boot_payload(version)), version)
    payload = result(await call(session, "Heartbeat", {}), version)
    assert CURRENT_TIME.match(payload["currentTime"])


@pytest.mark.parametrize("version", BOTH)
async def test_triggered_action_is_allowed_before_accepted(version: str) -> None:
    session = new_session(version, registration="Pending")
    session.state.triggered["Heartbeat"] = None
    result(await call(session, "Heartbeat", {}), version)
    assert error(await call(session, "DataTransfer", {"vendorId": "acme"}), version) == "SecurityError"


# --- action checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("action", ["FooBar", "heartbeat", "HeartbeatRequest", "Heartbeat.conf"])
async def test_unknown_action_is_not_implemented(version: str, action: str) -> None:
    assert error(await call(new_session(version), action, {}), version) == "NotImplemented"


@pytest.mark.parametrize(("version", "action"), [
    ("1.6", "RemoteStartTransaction"), ("1.6", "Reset"), ("1.6", "GetConfiguration"), ("1.6", "TriggerMessage"),
    ("2.0.1", "RequestStartTransaction"), ("2.0.1", "Reset"), ("2.0.1", "GetVariables"), ("2.0.1", "SetVariables"),
    ("2.1", "RequestStartTransaction"),
])
async def test_csms_to_charger_action_sent_by_a_charger_is_not_supported(version: str, action: str) -> None:
    assert action in known_actions(version)
    assert error(await call(new_session(version), action, {}), version) == "NotSupported"


@pytest.mark.parametrize(("version", "action"), [("1.6", "RemoteStartTransaction"),
                                                 ("2.0.1", "RequestStartTransaction")])
async def test_not_supported_is_answered_even_before_boot(version: str, action: str) -> None:
    session = new_session(version, registration="Pending")
    assert error(await call(session, action, {}), version) == "NotSupported"


# --- schema violations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "action", "payload", "code"), [
    ("1.6", "Heartbeat", {"extra": 1}, "FormatViolation"),
    ("1.6", "Authorize", {}, "OccurrenceConstraintViolation"),
    ("1.6", "Authorize", {"idTag": 5}, "TypeConstraintViolation"),
    ("1.6", "Authorize", {"idTag": "x" * 21}, "PropertyConstraintViolation"),
    ("1.6", "StatusNotification", {"connectorId": 1, "errorCode": "Error", "status": "Available"},
     "PropertyConstraintViolation"),
    ("1.6", "MeterValues", {"connectorId": 1, "meterValue": []}, "OccurrenceConstraintViolation"),
    ("1.6", "StartTransaction", {"connectorId": 1, "idTag": "GOOD", "meterStart": 0,
                                 "timestamp": "2024-01-01T00:00:00"}, "PropertyConstraintViolation"),
    ("2.0.1", "Heartbeat", {"extra": 1}, "FormatViolation"),
    ("2.0.1", "Authorize", {}, "OccurrenceConstraintViolation"),
    ("2.0.1", "StatusNotification", {"timestamp": "2024-01-01T00:00:00Z", "connectorStatus": "Available",
                                     "evseId": "1", "connectorId": 1}, "TypeConstraintViolation"),
    ("2.0.1", "StatusNotification", {"timestamp": "2024-01-01T00:00:00Z", "connectorStatus": "Charging",
                                     "evseId": 1, "connectorId": 1}, "PropertyConstraintViolation"),
    ("2.0.1", "TransactionEvent", {"eventType": "Started"}, "OccurrenceConstraintViolation"),
])
async def test_schema_violation_codes(version: str, action: str, payload: dict[str, Any], code: str) -> None:
    session = new_session(version)
    assert error(await call(session, action, payload), version) == code


@pytest.mark.parametrize("version", BOTH)
async def test_schema_violation_answers_with_the_message_id(version: str) -> None:
    outcome = await new_session(version).handle_call(Call("abc-42", "Heartbeat", {"x": 1}), datetime.now(UTC))
    assert frame_of(outcome)[1] == "abc-42"


# --- tolerant mode --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampled", [
    {"value": 1234.5},  # numeric value (lbbrhzn#210)
    {"value": "1234.5", "vendorExtra": "x"},  # extra property
])
async def test_tolerant_mode_accepts_16_meter_values(sampled: dict[str, Any]) -> None:
    session = new_session("1.6", tolerant=True)
    ts = iso(datetime.now(UTC))
    payload = {"connectorId": 1, "meterValue": [{"timestamp": ts, "sampledValue": [sampled]}]}
    outcome = await call(session, "MeterValues", payload)
    assert result(outcome, "1.6") == {}
    assert outcome.tolerated
    meter = only(outcome.events, MeterEvent)
    assert [s.value for s in meter.samples] == [1234.5]
    log = only(outcome.events, LogEvent)
    assert log.action == "SchemaViolation"
    assert log.payload["action"] == "MeterValues"
    assert log.payload["payload"] == payload


async def test_strict_mode_rejects_the_same_meter_values() -> None:
    ts = iso(datetime.now(UTC))
    payload = {"connectorId": 1, "meterValue": [{"timestamp": ts, "sampledValue": [{"value": 1234.5}]}]}
    assert error(await call(new_session("1.6"), "MeterValues", payload), "1.6") == "TypeConstraintViolation"


async def test_tolerant_mode_valid_message_is_not_marked() -> None:
    outcome = await call(new_session("1.6", tolerant=True), "Heartbeat", {})
    result(outcome, "1.6")
    assert not outcome.tolerated
    assert outcome.events == []


async def test_tolerant_mode_unreadable_payload_is_internal_error() -> None:
    outcome = await call(new_session("1.6", tolerant=True), "MeterValues", {"connectorId": 1, "meterValue": "abc"})
    assert error(outcome, "1.6") == "InternalError"


async def test_tolerant_mode_still_checks_ranges() -> None:
    outcome = await call(new_session("1.6", tolerant=True), "MeterValues", {"connectorId": -5, "meterValue": "x"})
    assert error(outcome, "1.6") == "PropertyConstraintViolation"


# --- 1.6 transactions -----------------------------------------------------------------------------------------


async def test_16_start_transaction_accepted() -> None:
    session = new_session("1.6")
    now = datetime.now(UTC)
    outcome = await call(session, "StartTransaction", start_payload(iso(now)), received_at=now)
    payload = result(outcome, "1.6")
    assert payload["idTagInfo"] == {"status": "Accepted"}
    tx_id = payload["transactionId"]
    assert isinstance(tx_id, int)
    event = only(outcome.events, TransactionEvent)
    assert event.kind == "started"
    assert event.transaction_uid == str(tx_id)
    assert event.ocpp16_transaction_id == tx_id
    assert (event.evse_id, event.connector_id) == (1, 1)
    assert event.id_token == "GOOD"
    assert event.meter_start_wh == 1000.0
    assert event.flags == 0
    assert session.state.open_tx_by_connector == {1: tx_id}


async def test_16_repeated_start_transaction_gets_the_same_id() -> None:
    services = MemoryServices()
    session = new_session("1.6", services=services)
    ts = iso(datetime.now(UTC))
    first = result(await call(session, "StartTransaction", start_payload(ts)), "1.6")
    again = result(await call(session, "StartTransaction", start_payload(ts)), "1.6")
    # A retry on a new connection (new session) is still the same transaction.
    other = result(await call(new_session("1.6", services=services), "StartTransaction", start_payload(ts)), "1.6")
    assert first["transactionId"] == again["transactionId"] == other["transactionId"]
    different = result(await call(session, "StartTransaction", start_payload(ts, meter_start=1001)), "1.6")
    assert different["transactionId"] != first["transactionId"]


@pytest.mark.parametrize(("decision", "status"), [
    (None, "Invalid"), (TokenDecision("Blocked"), "Blocked"), (TokenDecision("Expired"), "Expired"),
    (TokenDecision("Unknown"), "Invalid"),  # 1.6 has no Unknown (1.6 §7.14)
])
async def test_16_start_transaction_with_a_refused_tag_still_gets_a_transaction_id(
        decision: TokenDecision | None, status: str) -> None:
    tokens = {"BAD": decision} if decision is not None else {}
    session = new_session("1.6", services=MemoryServices(tokens=tokens))
    outcome = await call(session, "StartTransaction", start_payload(iso(datetime.now(UTC)), id_tag="BAD"))
    payload = result(outcome, "1.6")
    assert payload["idTagInfo"]["status"] == status
    assert isinstance(payload["transactionId"], int)
    assert only(outcome.events, TransactionEvent).kind == "started"


async def test_16_id_tag_info_carries_expiry_and_parent() -> None:
    expiry = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    session = new_session("1.6", services=MemoryServices(tokens={"GOOD": TokenDecision("Accepted", expiry, "GROUP-1")}))
    payload = result(await call(session, "Authorize", {"idTag": "GOOD"}), "1.6")
    assert payload == {"idTagInfo": {"status": "Accepted", "expiryDate": "2030-01-01T12:00:00.000Z",
                                     "parentIdTag": "GROUP-1"}}


async def test_16_stop_transaction_before_any_start_in_this_session() -> None:
    services = MemoryServices()
    services.tx_ids[(CP, "a start key without a connector")] = 4711  # given on an earlier connection
    session = new_session("1.6", services=services)
    now = datetime.now(UTC)
    outcome = await call(session, "StopTransaction", {"transactionId": 4711, "meterStop": 5000,
                                                      "timestamp": iso(now)}, received_at=now)
    assert result(outcome, "1.6") == {}
    event = only(outcome.events, TransactionEvent)
    assert event.kind == "ended"
    assert event.transaction_uid == "4711"
    assert event.ocpp16_transaction_id == 4711
    assert event.meter_stop_wh == 5000.0
    assert event.stop_reason == "Local"  # absent reason means Local (JSON errata 2.6)
    assert (event.evse_id, event.connector_id) == (None, None)
    assert event.flags == 0


async def test_16_stop_transaction_returns_id_tag_info_for_its_tag() -> None:
    session = new_session("1.6")
    outcome = await call(session, "StopTransaction", {"transactionId": 1, "meterStop": 5, "idTag": "GOOD",
                                                      "reason": "EVDisconnected", "timestamp": iso(datetime.now(UTC))})
    assert result(outcome, "1.6") == {"idTagInfo": {"status": "Accepted"}}
    event = only(outcome.events, TransactionEvent)
    assert event.stop_id_token == "GOOD"
    assert event.stop_reason == "EVDisconnected"


async def test_16_full_transaction_with_minus_one_meter_values() -> None:
    session = new_session("1.6")
    now = datetime.now(UTC)
    tx_id = result(await call(session, "StartTransaction", start_payload(iso(now), connector=2)), "1.6")[
        "transactionId"]
    mv = {"connectorId": 2, "transactionId": -1,
          "meterValue": [{"timestamp": iso(now), "sampledValue": [{"value": "1500"}]}]}
    # -1 is never attached to the connector's known transaction (issue 11 item 1): kept, flagged.
    outcome = await call(session, "MeterValues", mv)
    assert result(outcome, "1.6") == {}
    meter = only(outcome.events, MeterEvent)
    assert meter.transaction_uid == ""
    assert (meter.evse_id, meter.connector_id) == (2, 1)
    assert [s.value for s in meter.samples] == [1500.0]
    assert all(s.flags & FLAG_UNKNOWN_TRANSACTION for s in meter.samples)
    # A stop with -1 is its own session, even when only one transaction is open.
    stop = {"transactionId": -1, "meterStop": 2000, "timestamp": iso(now)}
    outcome = await call(session, "StopTransaction", stop)
    result(outcome, "1.6")
    event = only(outcome.events, TransactionEvent)
    assert event.transaction_uid.startswith("-1@")
    assert event.ocpp16_transaction_id is None
    assert (event.evse_id, event.connector_id) == (None, None)
    assert event.flags & FLAG_UNKNOWN_TRANSACTION
    assert session.state.open_tx_by_connector == {2: tx_id}
    # A retry of that stop is the same session (R41).
    assert only((await call(session, "StopTransaction", stop)).events, TransactionEvent).transaction_uid == \
        event.transaction_uid


async def test_16_meter_values_without_transaction_and_on_connector_zero_are_kept() -> None:
    session = new_session("1.6")
    ts = iso(datetime.now(UTC))
    outcome = await call(session, "MeterValues", {"connectorId": 0, "meterValue": [
        {"timestamp": ts, "sampledValue": [{"value": "123456"}]}]})
    result(outcome, "1.6")
    meter = only(outcome.events, MeterEvent)
    assert (meter.evse_id, meter.connector_id, meter.transaction_uid) == (0, 0, "")
    assert meter.samples[0].flags & FLAG_CONNECTOR_ZERO_TOTAL


async def test_16_stop_below_start_is_flagged() -> None:
    session = new_session("1.6")
    ts = iso(datetime.now(UTC))
    tx_id = result(await call(session, "StartTransaction", start_payload(ts, meter_start=5000)), "1.6")[
        "transactionId"]
    outcome = await call(session, "StopTransaction", {"transactionId": tx_id, "meterStop": 4000, "timestamp": ts})
    result(outcome, "1.6")
    event = only(outcome.events, TransactionEvent)
    assert event.flags & FLAG_METER_STOP_BELOW_START
    assert event.meter_stop_wh == 4000.0


async def test_16_stop_at_or_above_start_is_not_flagged() -> None:
    session = new_session("1.6")
    ts = iso(datetime.now(UTC))
    tx_id = result(await call(session, "StartTransaction", start_payload(ts, meter_start=5000)), "1.6")[
        "transactionId"]
    outcome = await call(session, "StopTransaction", {"transactionId": tx_id, "meterStop": 5000, "timestamp": ts})
    assert not only(outcome.events, TransactionEvent).flags & FLAG_METER_STOP_BELOW_START


async def test_16_stop_transaction_data_becomes_a_meter_event() -> None:
    session = new_session("1.6")
    ts = iso(datetime.now(UTC))
    tx_id = result(await call(session, "StartTransaction", start_payload(ts)), "1.6")["transactionId"]
    data = [{"timestamp": ts, "sampledValue": [{"value": "1000", "context": "Transaction.Begin"}]},
            {"timestamp": ts, "sampledValue": [{"value": "2.5", "unit": "kWh", "context": "Transaction.End"}]}]
    outcome = await call(session, "StopTransaction", {"transactionId": tx_id, "meterStop": 2500, "timestamp": ts,
                                                      "transactionData": data})
    result(outcome, "1.6")
    meter = only(outcome.events, MeterEvent)
    assert meter.transaction_uid == str(tx_id)
    assert [s.value for s in meter.samples] == [1000.0, 2500.0]
    assert all(s.flags == 0 for s in meter.samples)


async def test_16_stop_transaction_data_of_a_transaction_started_elsewhere_is_not_a_connector_zero_total() -> None:
    session = new_session("1.6")
    ts = iso(datetime.now(UTC))
    data = [{"timestamp": ts, "sampledValue": [{"value": "2500", "context": "Transaction.End"}]}]
    outcome = await call(session, "StopTransaction", {"transactionId": 4711, "meterStop": 2500, "timestamp": ts,
                                                      "transactionData": data})
    result(outcome, "1.6")
    meter = only(outcome.events, MeterEvent)
    assert not meter.samples[0].flags & FLAG_CONNECTOR_ZERO_TOTAL


# --- out-of-range integers ------------------------------------------------------------------------------------


def parsed(raw: str, version: str) -> Call:
    msg = parse_frame(raw, version)
    assert isinstance(msg, Call)
    return msg


@pytest.mark.parametrize("connector", ["100000000000000000000000", "-5", "2147483648"])
@pytest.mark.parametrize("template", [
    '[2,"m","StatusNotification",{"connectorId":%s,"errorCode":"NoError","status":"Available"}]',
    '[2,"m","StartTransaction",{"connectorId":%s,"idTag":"GOOD","meterStart":0,"timestamp":"2024-01-01T00:00:00Z"}]',
    '[2,"m","MeterValues",{"connectorId":%s,"meterValue":[{"timestamp":"2024-01-01T00:00:00Z",'
    '"sampledValue":[{"value":"1"}]}]}]',
])
async def test_16_connector_id_out_of_range(connector: str, template: str) -> None:
    msg = parsed(template % connector, "1.6")
    outcome = await new_session("1.6").handle_call(msg, datetime.now(UTC))
    assert error(outcome, "1.6") == "PropertyConstraintViolation"


@pytest.mark.parametrize("value", ["100000000000000000000000", "-5", "2147483648"])
@pytest.mark.parametrize("template", [
    '[2,"m","StatusNotification",{"timestamp":"2024-01-01T00:00:00Z","connectorStatus":"Available",'
    '"evseId":%s,"connectorId":1}]',
    '[2,"m","MeterValues",{"evseId":%s,"meterValue":[{"timestamp":"2024-01-01T00:00:00Z",'
    '"sampledValue":[{"value":1}]}]}]',
    '[2,"m","TransactionEvent",{"eventType":"Started","timestamp":"2024-01-01T00:00:00Z",'
    '"triggerReason":"Authorized","seqNo":%s,"transactionInfo":{"transactionId":"t"}}]',
])
async def test_201_integers_out_of_range(value: str, template: str) -> None:
    msg = parsed(template % value, "2.0.1")
    outcome = await new_session("2.0.1").handle_call(msg, datetime.now(UTC))
    assert error(outcome, "2.0.1") == "PropertyConstraintViolation"


async def test_16_meter_start_out_of_range() -> None:
    msg = parsed('[2,"m","StartTransaction",{"connectorId":1,"idTag":"GOOD","meterStart":100000000000000000000000,'
                 '"timestamp":"2024-01-01T00:00:00Z"}]', "1.6")
    assert error(await new_session("1.6").handle_call(msg, datetime.now(UTC)), "1.6") == "PropertyConstraintViolation"


# --- 2.0.1 TransactionEvent -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_transaction_event_lifecycle(version: str) -> None:
    session = new_session(version)
    now = datetime.now(UTC)
    ts = iso(now)
    started = await call(session, "TransactionEvent", tx_event(
        "Started", 0, ts, evse={"id": 2, "connectorId": 1}, idToken={"idToken": "GOOD", "type": "ISO14443"},
        meterValue=[energy(1000, ts, "Transaction.Begin")]), received_at=now)
    assert result(started, version) == {"idTokenInfo": {"status": "Accepted"}}
    event = only(started.events, TransactionEvent)
    assert (event.kind, event.transaction_uid, event.seq_no) == ("started", "tx-1", 0)
    assert (event.evse_id, event.connector_id) == (2, 1)
    assert event.id_token == "GOOD"
    assert event.meter_start_wh == 1000.0
    assert event.meter_stop_wh is None
    assert event.stop_reason is None
    assert event.trigger_reason == "Authorized"
    meter = only(started.events, MeterEvent)
    assert (meter.evse_id, meter.connector_id, meter.transaction_uid) == (2, 1, "tx-1")

    # evse is sent only in the first event (E01.FR.16): it is remembered.
    updated = await call(session, "TransactionEvent", tx_event(
        "Updated", 1, ts, transactionInfo={"transactionId": "tx-1", "chargingState": "Charging"},
        meterValue=[energy(1500, ts, "Sample.Periodic")]), received_at=now)
    assert result(updated, version) == {}
    event = only(updated.events, TransactionEvent)
    assert (event.kind, event.seq_no, event.charging_state) == ("updated", 1, "Charging")
    assert (event.evse_id, event.connector_id) == (2, 1)
    assert event.id_token is None
    assert event.meter_start_wh is None
    assert only(updated.events, MeterEvent).evse_id == 2

    ended = await call(session, "TransactionEvent", tx_event(
        "Ended", 2, ts, meterValue=[energy(2500, ts, "Transaction.End")]), received_at=now)
    assert result(ended, version) == {}
    event = only(ended.events, TransactionEvent)
    assert (event.kind, event.seq_no) == ("ended", 2)
    assert (event.evse_id, event.connector_id) == (2, 1)
    assert event.stop_reason == "Local"  # stoppedReason absent (E06.FR.09)
    assert event.meter_stop_wh == 2500.0
    assert event.meter_start_wh is None
    assert "tx-1" not in session.state.tx_window
    assert session.state.tx_evse["tx-1"] == (2, 1)   # kept: a retried Ended lands on the same EVSE


async def test_201_ended_with_reason_and_token() -> None:
    session = new_session("2.0.1")
    ts = iso(datetime.now(UTC))
    outcome = await call(session, "TransactionEvent", tx_event(
        "Ended", 7, ts, transactionInfo={"transactionId": "tx-9", "stoppedReason": "EVDisconnected"},
        idToken={"idToken": "UNKNOWN-TAG", "type": "ISO14443"}))
    assert result(outcome, "2.0.1") == {"idTokenInfo": {"status": "Invalid"}}
    event = only(outcome.events, TransactionEvent)
    assert event.stop_reason == "EVDisconnected"
    assert event.stop_id_token == "UNKNOWN-TAG"
    assert event.id_token is None
    assert (event.evse_id, event.connector_id) == (None, None)  # Started never seen: still recorded


async def test_201_transaction_event_fields() -> None:
    services = MemoryServices()
    session = new_session("2.0.1", services=services)
    ts = iso(datetime.now(UTC))
    outcome = await call(session, "TransactionEvent", tx_event(
        "Started", 0, ts, offline=True, evse={"id": 1},
        transactionInfo={"transactionId": "tx-2", "remoteStartId": 77},
        idToken={"idToken": "", "type": "NoAuthorization"}))
    assert result(outcome, "2.0.1") == {"idTokenInfo": {"status": "Accepted"}}
    assert services.authorized == []  # NoAuthorization is not looked up
    event = only(outcome.events, TransactionEvent)
    assert event.offline
    assert event.remote_start_id == 77
    assert (event.evse_id, event.connector_id) == (1, None)
    assert [e for e in outcome.events if isinstance(e, MeterEvent)] == []


async def test_201_id_token_info_with_expiry_and_group() -> None:
    expiry = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    session = new_session("2.0.1", services=MemoryServices(tokens={"GOOD": TokenDecision("Accepted", expiry, "G1")}))
    payload = result(await call(session, "Authorize", {"idToken": {"idToken": "GOOD", "type": "ISO14443"}}), "2.0.1")
    assert payload == {"idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": "2030-01-01T12:00:00.000Z",
                                       "groupIdToken": {"idToken": "G1", "type": "Central"}}}


@pytest.mark.parametrize("version", BOTH)
async def test_expiry_is_sent_with_at_most_three_fractional_digits(version: str) -> None:
    expiry = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    session = new_session(version, services=MemoryServices(tokens={"GOOD": TokenDecision("Accepted", expiry)}))
    if version == "1.6":
        sent = result(await call(session, "Authorize", {"idTag": "GOOD"}), version)["idTagInfo"]["expiryDate"]
    else:
        payload = {"idToken": {"idToken": "GOOD", "type": "ISO14443"}}
        sent = result(await call(session, "Authorize", payload), version)["idTokenInfo"]["cacheExpiryDateTime"]
    assert CURRENT_TIME.match(sent), sent


async def test_our_own_invalid_response_is_internal_error() -> None:
    # A registry returning a status outside the 2.0.1 enum makes our response invalid.
    bogus = TokenDecision("Accepted")
    object.__setattr__(bogus, "status", "Maybe")
    session = new_session("2.0.1", services=MemoryServices(tokens={"GOOD": bogus}))
    outcome = await call(session, "Authorize", {"idToken": {"idToken": "GOOD", "type": "ISO14443"}})
    assert error(outcome, "2.0.1") == "InternalError"


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_transaction_event_meter_values_with_multiplier(version: str) -> None:
    session = new_session(version)
    ts = iso(datetime.now(UTC))
    sampled = [{"value": 12.5, "context": "Transaction.Begin", "unitOfMeasure": {"unit": "kWh", "multiplier": 3}},
               {"value": 7.2, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}}]
    outcome = await call(session, "TransactionEvent", tx_event("Started", 0, ts, evse={"id": 1},
                                                               meterValue=[{"timestamp": ts, "sampledValue": sampled}]))
    result(outcome, version)
    assert only(outcome.events, TransactionEvent).meter_start_wh == 12_500_000.0
    assert [s.value for s in only(outcome.events, MeterEvent).samples] == [12_500_000.0, 7200.0]


@pytest.mark.parametrize(("version", "action", "payload"), [
    ("1.6", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                   "timestamp": "0001-01-01T00:00:00+01:00"}),
    ("1.6", "StartTransaction", start_payload("9999-12-31T23:59:59-01:00")),
    ("2.0.1", "StatusNotification", {"timestamp": "0001-01-01T00:00:00+01:00", "connectorStatus": "Available",
                                     "evseId": 1, "connectorId": 1}),
    ("2.0.1", "TransactionEvent", tx_event("Started", 0, "9999-12-31T23:59:59-01:00")),
])
async def test_schema_valid_timestamp_outside_the_datetime_range_is_answered(
        version: str, action: str, payload: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    outcome = await call(new_session(version), action, payload, received_at=now)
    result(outcome, version)
    assert all(getattr(e, "time", now) == now for e in outcome.events)  # the receive time stands in


async def test_lower_case_z_timestamp_is_the_chargers_time() -> None:
    outcome = await call(new_session("1.6"), "StartTransaction", start_payload("2024-06-01t12:00:00.250z"))
    result(outcome, "1.6")
    assert only(outcome.events, TransactionEvent).time == datetime(2024, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)


# --- 2.0.1 status ---------------------------------------------------------------------------------------------


def notify_event(component: dict[str, Any], variable: str, value: str, ts: str) -> dict[str, Any]:
    return {"generatedAt": ts, "seqNo": 0, "eventData": [{
        "eventId": 1, "timestamp": ts, "trigger": "Delta", "actualValue": value,
        "eventNotificationType": "HardWiredNotification", "component": component, "variable": {"name": variable}}]}


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_notify_event_connector_availability_is_a_status_event(version: str) -> None:
    session = new_session(version)
    ts = "2024-06-01T12:00:00.000Z"
    outcome = await call(session, "NotifyEvent", notify_event(
        {"name": "Connector", "evse": {"id": 2, "connectorId": 1}}, "AvailabilityState", "Occupied", ts))
    assert result(outcome, version) == {}
    status = only(outcome.events, StatusEvent)
    assert (status.evse_id, status.connector_id, status.status) == (2, 1, "Occupied")
    assert status.time == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert only(outcome.events, LogEvent).action == "NotifyEvent"


async def test_notify_event_other_variables_are_only_logged() -> None:
    session = new_session("2.0.1")
    ts = iso(datetime.now(UTC))
    cases: list[tuple[dict[str, Any], str]] = [({"name": "Connector", "evse": {"id": 1}}, "Enabled"),
                                               ({"name": "EVSE", "evse": {"id": 1}}, "AvailabilityState"),
                                               ({"name": "Connector"}, "AvailabilityState")]
    for component, variable in cases:
        outcome = await call(session, "NotifyEvent", notify_event(component, variable, "x", ts))
        result(outcome, "2.0.1")
        assert [type(e) for e in outcome.events] == [LogEvent]


async def test_201_status_notification() -> None:
    session = new_session("2.0.1")
    outcome = await call(session, "StatusNotification", {"timestamp": "2024-06-01T12:00:00Z",
                                                         "connectorStatus": "Faulted", "evseId": 3, "connectorId": 2})
    assert result(outcome, "2.0.1") == {}
    status = only(outcome.events, StatusEvent)
    assert (status.evse_id, status.connector_id, status.status) == (3, 2, "Faulted")


async def test_16_status_notification() -> None:
    session = new_session("1.6")
    outcome = await call(session, "StatusNotification", {
        "connectorId": 2, "errorCode": "OtherError", "status": "Faulted", "info": "door",
        "vendorId": "acme", "vendorErrorCode": "E42", "timestamp": "2024-06-01T12:00:00Z"})
    assert result(outcome, "1.6") == {}
    status = only(outcome.events, StatusEvent)
    assert (status.evse_id, status.connector_id, status.status, status.error_code) == (2, 1, "Faulted", "OtherError")
    assert (status.info, status.vendor_id, status.vendor_error_code) == ("door", "acme", "E42")
    outcome = await call(session, "StatusNotification", {"connectorId": 0, "errorCode": "NoError",
                                                         "status": "Available"})
    status = only(outcome.events, StatusEvent)
    assert (status.evse_id, status.connector_id) == (0, 0)


@pytest.mark.parametrize("version", BOTH)
async def test_data_transfer_is_unknown_vendor(version: str) -> None:
    outcome = await call(new_session(version), "DataTransfer", {"vendorId": "acme", "messageId": "x"})
    assert result(outcome, version) == {"status": "UnknownVendorId"}
    assert only(outcome.events, LogEvent).action == "DataTransfer"


@pytest.mark.parametrize("version", BOTH)
async def test_nul_is_cleaned_from_events(version: str) -> None:
    # NUL parses (framing) and reaches the handler; PostgreSQL rejects it in text (R56).
    # (Lone surrogates never get this far: orjson refuses them in parse_frame.)
    msg = parsed('[2,"m","DataTransfer",{"vendorId":"ac\\u0000me","data":"a\\u0000b"}]', version)
    outcome = await new_session(version).handle_call(msg, datetime.now(UTC))
    result(outcome, version)
    log = only(outcome.events, LogEvent)
    assert log.payload == {"vendorId": "ac\ufffdme", "data": "a\ufffdb"}
    assert len(log.digest) == 32


# --- every handler answers a minimal valid request ------------------------------------------------------------


# The smallest valid request of each schema: the coverage table's generator makes the same probe.
minimal_instance = coverage.minimal_instance


HANDLED = [(version, action) for version in ALL for action in sorted(HANDLERS[version])]


@pytest.mark.parametrize(("version", "action"), HANDLED)
async def test_every_handler_answers_a_minimal_valid_request(version: str, action: str) -> None:
    payload = minimal_instance(load_schema(version, action, False))
    assert isinstance(payload, dict)
    validate(version, action, payload)
    outcome = await call(new_session(version), action, payload)
    if version == "2.1" and action in handlers_v21.SEND_ACTIONS:
        # A SEND has no response (2.1 Part 4 §4.2.4; the gateway never answers it): only stored.
        assert outcome.error_code is None
        assert outcome.events
        return
    response = result(outcome, version)
    assert isinstance(response, dict)
    assert not outcome.tolerated


def test_handler_tables() -> None:
    assert set(handlers_v16.HANDLERS) == {
        "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
        "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification",
        "StopTransaction", "LogStatusNotification", "SecurityEventNotification", "SignCertificate",
        "SignedFirmwareStatusNotification"}
    assert len(handlers_v201.HANDLERS) == 25
    for version in ALL:
        assert set(HANDLERS[version]) <= known_actions(version)
    # 2.1: 2.0.1's messages and the ones new in 2.1 (issue 14).
    assert set(HANDLERS["2.1"]) == set(handlers_v201.HANDLERS) | set(handlers_v21_only.HANDLERS)
    assert set(handlers_v16.HANDLERS) >= handlers_v16.TRANSACTION_ACTIONS
    assert set(handlers_v201.HANDLERS) >= handlers_v201.TRANSACTION_ACTIONS


# --- 2.1 ------------------------------------------------------------------------------------------------------


async def test_21_boot_and_transaction_event_validate_against_21_schemas() -> None:
    session = new_session("2.1", registration="Pending")
    outcome = await call(session, "BootNotification", boot_payload("2.1"))
    payload = result(outcome, "2.1")
    assert payload["status"] == "Accepted"
    validate("2.1", "BootNotification", payload, response=True)
    assert only(outcome.events, ConnectionEvent).ocpp_version == "2.1"
    assert session.state.registration == "Accepted"

    ts = iso(datetime.now(UTC))
    request = tx_event("Started", 0, ts, evse={"id": 1, "connectorId": 1},
                       idToken={"idToken": "GOOD", "type": "ISO14443"},
                       meterValue=[energy(10, ts, "Transaction.Begin")])
    validate("2.1", "TransactionEvent", request)
    outcome = await call(session, "TransactionEvent", request)
    payload = result(outcome, "2.1")
    validate("2.1", "TransactionEvent", payload, response=True)
    assert payload == {"idTokenInfo": {"status": "Accepted"}}
    event = only(outcome.events, TransactionEvent)
    assert (event.kind, event.evse_id, event.meter_start_wh) == ("started", 1, 10.0)


async def test_21_uses_the_21_schema() -> None:
    # 2.1 BootReasonEnumType has no value 'Foo' either; 2.1-only actions are handled and validated (issue 14).
    session = new_session("2.1")
    assert error(await call(session, "NotifySettlement", {}), "2.1") == "OccurrenceConstraintViolation"
    assert error(await call(session, "BootNotification", {"reason": "Foo", "chargingStation": {
        "model": "m", "vendorName": "v"}}), "2.1") == "PropertyConstraintViolation"
