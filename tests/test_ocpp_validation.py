"""Unit tests of strict schema validation and the schema-failure → OCPP error mapping (R11, §1.3)."""

from __future__ import annotations

from typing import Any

import pytest

from csms.ocpp.errors import (
    FormatViolation,
    OccurrenceConstraintViolation,
    OcppError,
    PropertyConstraintViolation,
    TypeConstraintViolation,
)
from csms.ocpp.validation import compiled, known_actions, load_schema, schema_file_name, validate

TS = "2024-05-01T12:00:00Z"
SEND_ONLY = {"2.1": frozenset({"NotifyPeriodicEventStream"})}


def failure(version: str, action: str, payload: dict[str, Any], *, response: bool = False) -> OcppError:
    with pytest.raises(OcppError) as info:
        validate(version, action, payload, response=response)
    return info.value


def meter_values_16(samples: int = 10) -> dict[str, Any]:
    sampled = [
        {"value": "1234.5", "context": "Sample.Periodic", "format": "Raw", "measurand": "Energy.Active.Import.Register",
         "location": "Outlet", "unit": "Wh"},
        {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "15.9", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        {"value": "16.1", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
        {"value": "230.1", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
        {"value": "50.0", "measurand": "Frequency"},
        {"value": "42", "measurand": "SoC", "location": "EV", "unit": "Percent"},
        {"value": "31.5", "measurand": "Temperature", "location": "Body", "unit": "Celcius"},
        {"value": "0.98", "measurand": "Power.Factor"},
    ][:samples]
    return {"connectorId": 1, "transactionId": 17, "meterValue": [{"timestamp": TS, "sampledValue": sampled}]}


# --- schemas and actions --------------------------------------------------------------------------------------


def test_known_action_counts() -> None:
    assert len(known_actions("1.6")) == 39
    assert len(known_actions("2.0.1")) == 64
    assert len(known_actions("2.1")) == 91


@pytest.mark.parametrize("action", [
    "SecurityEventNotification", "SignCertificate", "SignedFirmwareStatusNotification", "LogStatusNotification",
    "SignedUpdateFirmware", "InstallCertificate", "ExtendedTriggerMessage", "GetLog",
])
def test_16_includes_security_whitepaper(action: str) -> None:
    assert action in known_actions("1.6")


@pytest.mark.parametrize(("version", "present", "absent"), [
    ("1.6", {"BootNotification", "StartTransaction", "RemoteStartTransaction", "MeterValues"},
     {"TransactionEvent", "BootNotificationResponse", "BootNotificationRequest"}),
    ("2.0.1", {"BootNotification", "TransactionEvent", "RequestStartTransaction", "NotifyEvent"},
     {"StartTransaction", "BootNotificationRequest", "NotifyPeriodicEventStream"}),
    ("2.1", {"BootNotification", "TransactionEvent", "NotifyPeriodicEventStream", "NotifySettlement"},
     {"StartTransaction", "TransactionEventRequest"}),
])
def test_known_actions_names(version: str, present: set[str], absent: set[str]) -> None:
    assert present <= known_actions(version)
    assert not absent & known_actions(version)


def test_schema_file_names() -> None:
    assert schema_file_name("1.6", "Heartbeat", response=False) == "Heartbeat.json"
    assert schema_file_name("1.6", "Heartbeat", response=True) == "HeartbeatResponse.json"
    assert schema_file_name("2.0.1", "Heartbeat", response=False) == "HeartbeatRequest.json"
    assert schema_file_name("2.1", "Heartbeat", response=True) == "HeartbeatResponse.json"


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_every_known_schema_loads_and_compiles(version: str) -> None:
    for action in known_actions(version):
        # A 2.1 SEND message (NotifyPeriodicEventStream, §4.2.4) has no response schema.
        for response in (False,) if action in SEND_ONLY.get(version, ()) else (False, True):
            schema = load_schema(version, action, response)
            assert schema.get("type") == "object"
            assert callable(compiled(version, action, response))


def test_21_send_message_schema_has_no_request_suffix() -> None:
    assert load_schema("2.1", "NotifyPeriodicEventStream", False)["$id"].endswith("NotifyPeriodicEventStream")
    validate("2.1", "NotifyPeriodicEventStream", {"id": 1, "pending": 0, "basetime": TS, "data": [
        {"t": 0.0, "v": "1"}]})
    for action in known_actions("2.1"):   # every request schema compiles, the SEND one included
        assert callable(compiled("2.1", action, False))


def test_compiled_is_cached() -> None:
    assert compiled("2.0.1", "Heartbeat", False) is compiled("2.0.1", "Heartbeat", False)


# --- valid payloads -------------------------------------------------------------------------------------------


def test_ten_sample_16_meter_values_passes() -> None:
    payload = meter_values_16(10)
    assert len(payload["meterValue"][0]["sampledValue"]) == 10
    validate("1.6", "MeterValues", payload)


@pytest.mark.parametrize("ts", ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123Z", "2024-05-01T14:00:00+02:00",
                                "2024-05-01T12:00:00.123456789-05:30"])
def test_timestamps_with_offset_pass(ts: str) -> None:
    validate("1.6", "Heartbeat", {})
    validate("1.6", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": ts})
    validate("2.0.1", "StatusNotification",
             {"timestamp": ts, "connectorStatus": "Available", "evseId": 1, "connectorId": 1})


def test_201_custom_data_is_accepted() -> None:
    validate("2.0.1", "StatusNotification", {
        "timestamp": TS, "connectorStatus": "Available", "evseId": 1, "connectorId": 1,
        "customData": {"vendorId": "acme", "anything": [1, 2, {"x": None}]}})


def test_response_schema_is_used_with_response_true() -> None:
    validate("2.0.1", "Heartbeat", {"currentTime": "2024-05-01T12:00:00.000Z"}, response=True)
    assert isinstance(failure("2.0.1", "Heartbeat", {}, response=True), OccurrenceConstraintViolation)


# --- error mapping --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "action", "payload", "error", "rule"), [
    # additionalProperties → FormatViolation
    ("1.6", "Heartbeat", {"x": 1}, FormatViolation, "additionalProperties"),
    ("1.6", "MeterValues", {**meter_values_16(1), "foo": 1}, FormatViolation, "additionalProperties"),
    ("2.0.1", "Heartbeat", {"x": 1}, FormatViolation, "additionalProperties"),
    ("2.1", "Heartbeat", {"x": 1}, FormatViolation, "additionalProperties"),
    # required / minItems → OccurrenceConstraintViolation
    ("1.6", "MeterValues", {"connectorId": 1}, OccurrenceConstraintViolation, "required"),
    ("1.6", "MeterValues", {"connectorId": 1, "meterValue": []}, OccurrenceConstraintViolation, "minItems"),
    ("1.6", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": []}]},
     OccurrenceConstraintViolation, "minItems"),
    ("2.0.1", "BootNotification", {"reason": "PowerUp"}, OccurrenceConstraintViolation, "required"),
    ("2.0.1", "TransactionEvent", {"eventType": "Started", "timestamp": TS, "triggerReason": "Authorized",
                                   "seqNo": 0, "transactionInfo": {"transactionId": "t"}, "meterValue": []},
     OccurrenceConstraintViolation, "minItems"),
    # type → TypeConstraintViolation
    ("1.6", "MeterValues", {"connectorId": "1", "meterValue": meter_values_16(1)["meterValue"]},
     TypeConstraintViolation, "type"),
    ("1.6", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": 12}]}]},
     TypeConstraintViolation, "type"),
    ("1.6", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 1.5, "timestamp": TS},
     TypeConstraintViolation, "type"),
    ("1.6", "StartTransaction", {"connectorId": True, "idTag": "T", "meterStart": 1, "timestamp": TS},
     TypeConstraintViolation, "type"),
    ("2.0.1", "StatusNotification", {"timestamp": TS, "connectorStatus": "Available", "evseId": "1",
                                     "connectorId": 1}, TypeConstraintViolation, "type"),
    # enum / maxLength / format → PropertyConstraintViolation
    ("1.6", "StatusNotification", {"connectorId": 1, "errorCode": "Error", "status": "Available"},
     PropertyConstraintViolation, "enum"),
    ("1.6", "MeterValues", {"connectorId": 1, "meterValue": [
        {"timestamp": TS, "sampledValue": [{"value": "1", "measurand": "Request.Energy"}]}]},
     PropertyConstraintViolation, "enum"),
    ("1.6", "Authorize", {"idTag": "x" * 21}, PropertyConstraintViolation, "maxLength"),
    ("1.6", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m",
                                 "chargePointSerialNumber": "s" * 26}, PropertyConstraintViolation, "maxLength"),
    ("1.6", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 1, "timestamp": "not-a-date"},
     PropertyConstraintViolation, "format"),
    ("2.0.1", "BootNotification", {"reason": "Foo", "chargingStation": {"model": "m", "vendorName": "v"}},
     PropertyConstraintViolation, "enum"),
    ("2.0.1", "BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "m" * 21, "vendorName": "v"}},
     PropertyConstraintViolation, "maxLength"),
])
def test_error_code_mapping(version: str, action: str, payload: dict[str, Any], error: type[OcppError],
                            rule: str) -> None:
    exc = failure(version, action, payload)
    assert type(exc) is error
    assert exc.details["rule"] == rule
    assert isinstance(exc.details["field"], str)


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_naive_timestamp_fails_date_time(version: str) -> None:
    if version == "1.6":
        exc = failure(version, "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": "2024-05-01T12:00:00", "sampledValue": [{"value": "1"}]}]})
        assert exc.details["field"] == "meterValue[0].timestamp"
    else:
        exc = failure(version, "StatusNotification", {"timestamp": "2024-05-01T12:00:00",
                                                      "connectorStatus": "Available", "evseId": 1, "connectorId": 1})
        assert exc.details["field"] == "timestamp"
    assert isinstance(exc, PropertyConstraintViolation)
    assert exc.details["rule"] == "format"


def test_description_names_the_field() -> None:
    exc = failure("1.6", "Authorize", {"idTag": "x" * 21})
    assert exc.description.startswith("idTag: ")
    assert exc.details == {"field": "idTag", "rule": "maxLength"}
    exc = failure("1.6", "Heartbeat", {"x": 1})
    assert exc.description.startswith("payload: ")


@pytest.mark.parametrize(("version", "action", "payload"), [
    ("1.6", "Authorize", {"idTag": "SECRET" * 5000}),
    ("1.6", "Authorize", {"idTag": "x", "SECRET" * 5000: 1}),
    ("1.6", "DataTransfer", {"vendorId": "v", "data": 5, "SECRET": "SECRET" * 5000}),
    ("1.6", "StatusNotification", {"connectorId": 1, "errorCode": "SECRET" * 5000, "status": "Available"}),
    ("2.0.1", "DataTransfer", {"vendorId": "SECRET" * 5000}),
    ("2.0.1", "BootNotification", {"reason": "PowerUp", "chargingStation": {
        "model": "m", "vendorName": "v", "SECRET" * 100: "SECRET" * 5000}}),
])
def test_description_is_bounded_and_never_the_whole_payload(version: str, action: str,
                                                            payload: dict[str, Any]) -> None:
    exc = failure(version, action, payload)
    assert len(exc.description) <= 255
    assert "SECRET" * 50 not in exc.description
    assert all("SECRET" * 50 not in str(v) for v in exc.details.values())


@pytest.mark.parametrize("value", [1e23, -1e23, 2.0**64, 1e300])
def test_integer_beyond_64_bits_is_out_of_range_not_wrong_type(value: float) -> None:
    # orjson reads 100000000000000000000000 as 1e23; the draft-04 (1.6) schema says "not an integer",
    # but the JSON value is an integer: out of range (PropertyConstraintViolation, R56).
    exc = failure("1.6", "StartTransaction", {"connectorId": value, "idTag": "T", "meterStart": 1, "timestamp": TS})
    assert isinstance(exc, PropertyConstraintViolation)
    assert exc.details["field"] == "connectorId"


@pytest.mark.parametrize("value", [1.5, 1.0, 1e5])
def test_fractional_or_small_float_for_integer_is_still_type_violation_on_16(value: float) -> None:
    exc = failure("1.6", "StartTransaction", {"connectorId": value, "idTag": "T", "meterStart": 1, "timestamp": TS})
    assert isinstance(exc, TypeConstraintViolation)


def test_201_integral_float_is_an_integer_in_draft_06() -> None:
    validate("2.0.1", "StatusNotification", {"timestamp": TS, "connectorStatus": "Available", "evseId": 1.0,
                                             "connectorId": 1e23})
