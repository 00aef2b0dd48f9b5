"""OCPP-J payloads a simulated charger sends, per version (pure functions, plain dicts).

Built by hand rather than with the ``ocpp`` package's dataclasses: a charger's payloads are
small and fixed, and 10,000 chargers cannot afford per-message dataclass conversion. Every
payload is checked against the official schemas in ``tests/test_simulate.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from csms.simulate.fleet import ChargerProfile

# Neutral connector states (the 1.6 ChargePointStatus names) → 2.0.1 ConnectorStatusEnumType.
_V201_STATUS = {"Available": "Available", "Faulted": "Faulted", "Unavailable": "Unavailable"}

FAULT_CODES_V16 = ("GroundFailure", "HighTemperature", "OverCurrentFailure", "PowerMeterFailure",
                   "PowerSwitchFailure", "ConnectorLockFailure", "EVCommunicationError", "OtherError")


def iso(t: float) -> str:
    """RFC 3339 UTC with milliseconds (1.6 §3.15; 2.0.1 Part 2 §2.1.4)."""
    ts = datetime.fromtimestamp(t, UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def wire_status(version: str, status: str) -> str:
    return status if version == "1.6" else _V201_STATUS.get(status, "Occupied")


@dataclass(frozen=True, slots=True)
class Reading:
    energy_wh: float
    power_w: float
    current_a: float
    voltage_v: float
    soc: float | None     # DC only: an AC charger does not learn the vehicle's SoC


def boot(profile: ChargerProfile, reason: str) -> dict[str, Any]:
    if profile.version == "1.6":
        return {"chargePointVendor": profile.vendor, "chargePointModel": profile.model,
                "chargePointSerialNumber": profile.serial_number, "firmwareVersion": profile.firmware_version}
    return {"reason": reason, "chargingStation": {
        "model": profile.model, "vendorName": profile.vendor, "serialNumber": profile.serial_number,
        "firmwareVersion": profile.firmware_version}}


def status(version: str, evse_id: int, state: str, t: float, *, error_code: str = "NoError",
           vendor_error_code: str = "") -> dict[str, Any]:
    if version == "1.6":
        out: dict[str, Any] = {"connectorId": evse_id, "errorCode": error_code, "status": state,
                               "timestamp": iso(t)}
        if vendor_error_code:
            out["vendorId"] = "simulated"
            out["vendorErrorCode"] = vendor_error_code
        return out
    return {"timestamp": iso(t), "connectorStatus": wire_status(version, state), "evseId": evse_id,
            "connectorId": 1}


def authorize(version: str, token: str) -> dict[str, Any]:
    if version == "1.6":
        return {"idTag": token}
    return {"idToken": {"idToken": token, "type": "ISO14443"}}


def _sv16(r: Reading, context: str) -> list[dict[str, Any]]:
    out = [{"value": f"{r.energy_wh:.0f}", "context": context, "measurand": "Energy.Active.Import.Register",
            "unit": "Wh"},
           {"value": f"{r.power_w:.0f}", "context": context, "measurand": "Power.Active.Import", "unit": "W"},
           {"value": f"{r.current_a:.1f}", "context": context, "measurand": "Current.Import", "unit": "A"},
           {"value": f"{r.voltage_v:.1f}", "context": context, "measurand": "Voltage", "unit": "V"}]
    if r.soc is not None:
        out.append({"value": f"{r.soc:.0f}", "context": context, "measurand": "SoC", "unit": "Percent",
                    "location": "EV"})
    return out


def _sv201(r: Reading, context: str) -> list[dict[str, Any]]:
    out = [{"value": round(r.energy_wh), "context": context, "measurand": "Energy.Active.Import.Register",
            "unitOfMeasure": {"unit": "Wh"}},
           {"value": round(r.power_w), "context": context, "measurand": "Power.Active.Import",
            "unitOfMeasure": {"unit": "W"}},
           {"value": round(r.current_a, 1), "context": context, "measurand": "Current.Import",
            "unitOfMeasure": {"unit": "A"}},
           {"value": round(r.voltage_v, 1), "context": context, "measurand": "Voltage",
            "unitOfMeasure": {"unit": "V"}}]
    if r.soc is not None:
        out.append({"value": round(r.soc), "context": context, "measurand": "SoC", "location": "EV",
                    "unitOfMeasure": {"unit": "Percent"}})
    return out


def start_transaction_v16(connector_id: int, token: str, meter_start_wh: float, t: float) -> dict[str, Any]:
    return {"connectorId": connector_id, "idTag": token, "meterStart": round(meter_start_wh), "timestamp": iso(t)}


def stop_transaction_v16(meter_stop_wh: float, t: float, reason: str, token: str | None) -> dict[str, Any]:
    """Without transactionId: it is filled in when sent (it may not be known yet when queued)."""
    out: dict[str, Any] = {"meterStop": round(meter_stop_wh), "timestamp": iso(t), "reason": reason}
    if token is not None:
        out["idTag"] = token
    return out


def meter_values_v16(connector_id: int, t: float, r: Reading) -> dict[str, Any]:
    """Without transactionId (filled in when sent)."""
    return {"connectorId": connector_id,
            "meterValue": [{"timestamp": iso(t), "sampledValue": _sv16(r, "Sample.Periodic")}]}


def transaction_event(*, event_type: str, t: float, trigger: str, seq_no: int, transaction_id: str,
                      charging_state: str | None = None, evse_id: int | None = None, token: str | None = None,
                      reading: Reading | None = None, offline: bool = False, stopped_reason: str | None = None,
                      remote_start_id: int | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"transactionId": transaction_id}
    if charging_state is not None:
        info["chargingState"] = charging_state
    if stopped_reason is not None:
        info["stoppedReason"] = stopped_reason
    if remote_start_id is not None:
        info["remoteStartId"] = remote_start_id
    out: dict[str, Any] = {"eventType": event_type, "timestamp": iso(t), "triggerReason": trigger,
                           "seqNo": seq_no, "transactionInfo": info}
    if offline:
        out["offline"] = True
    if evse_id is not None:
        out["evse"] = {"id": evse_id, "connectorId": 1}
    if token is not None:
        out["idToken"] = {"idToken": token, "type": "ISO14443"}
    if reading is not None:
        context = {"Started": "Transaction.Begin", "Ended": "Transaction.End"}.get(event_type, "Sample.Periodic")
        out["meterValue"] = [{"timestamp": iso(t), "sampledValue": _sv201(reading, context)}]
    return out
