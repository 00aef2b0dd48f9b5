"""Operator commands to chargers: version-neutral requests mapped onto each OCPP version.

Rules applied before anything is sent:

* the charger must be connected to this node, else the command fails at once;
* after BootNotification Rejected the CSMS initiates nothing (B03.FR.03; 1.6 §4.2; R31);
* while Pending only configuration and reporting commands may be sent, and no remote
  start/stop (B02.FR.01/05; 1.6 §4.2; R30);
* the payload must match the official request schema of the charger's version (and the charger's
  answer its response schema: ``csms.gateway.outgoing``).

OCPP 2.1 is its own version here: it keeps every CSMS-initiated 2.0.1 message and adds fifteen
(tariffs, DER control, battery swap, priority charging, dynamic schedules, aFRR, periodic event
streams, web payments); the typed builders below map the common operator tasks onto them and refuse
them, with the reason, on a charger of another version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from csms.common.errors import ChargerCommandError
from csms.ocpp.errors import OcppError
from csms.ocpp.validation import known_actions, validate

# CSMS → charger actions per version (the ones an operator may send).
CSMS_ACTIONS: dict[str, frozenset[str]] = {
    "1.6": frozenset({
        "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
        "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
        "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList",
        "SetChargingProfile", "TriggerMessage", "UnlockConnector", "UpdateFirmware",
        # Security Whitepaper ed. 3
        "CertificateSigned", "DeleteCertificate", "ExtendedTriggerMessage", "GetInstalledCertificateIds",
        "GetLog", "InstallCertificate", "SignedUpdateFirmware"}),
    "2.0.1": frozenset({
        "CancelReservation", "CertificateSigned", "ChangeAvailability", "ClearCache", "ClearChargingProfile",
        "ClearDisplayMessage", "ClearVariableMonitoring", "CostUpdated", "CustomerInformation", "DataTransfer",
        "DeleteCertificate", "GetBaseReport", "GetChargingProfiles", "GetCompositeSchedule", "GetDisplayMessages",
        "GetInstalledCertificateIds", "GetLocalListVersion", "GetLog", "GetMonitoringReport", "GetReport",
        "GetTransactionStatus", "GetVariables", "InstallCertificate", "RequestStartTransaction",
        "RequestStopTransaction", "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile",
        "SetDisplayMessage", "SetMonitoringBase", "SetMonitoringLevel", "SetNetworkProfile",
        "SetVariableMonitoring", "SetVariables", "TriggerMessage", "UnlockConnector", "UnpublishFirmware",
        "UpdateFirmware",
        # To a Local Controller, which connects like a charging station (2.0.1 Part 2 L03, as UnpublishFirmware L04)
        "PublishFirmware"}),
}
# The CSMS → charging station messages OCPP 2.1 adds (2.1 Part 2: block I "Tariff and cost", local
# cost calculation; K "Smart charging", dynamic schedules and priority charging; Q "Bidirectional
# power transfer", allowed energy transfer and aFRR; R "DER control"; and the battery swap, periodic
# event stream and web payment use cases). Each has a request schema in the ocpp package's 2.1
# schemas and none is sent by a charger (tests/test_ocpp21_commands.py checks the partition).
CSMS_ACTIONS_NEW_IN_21 = frozenset({
    "AFRRSignal", "AdjustPeriodicEventStream", "ChangeTransactionTariff", "ClearDERControl", "ClearTariffs",
    "GetDERControl", "GetPeriodicEventStream", "GetTariffs", "NotifyAllowedEnergyTransfer",
    "NotifyWebPaymentStarted", "RequestBatterySwap", "SetDERControl", "SetDefaultTariff", "UpdateDynamicSchedule",
    "UsePriorityCharging"})
# 2.1 keeps every CSMS-initiated 2.0.1 message (none is removed; each has its 2.1 schema).
CSMS_ACTIONS["2.1"] = CSMS_ACTIONS["2.0.1"] | CSMS_ACTIONS_NEW_IN_21

# While Pending the CSMS may read and change configuration and ask for reports (B02.FR.01 in 2.0.1
# and 2.1; 1.6 §4.2; R30): none of the 2.1 additions is configuration or a device-model report, so
# tariffs, DER controls, swaps etc. wait for Accepted like remote start/stop (B02.FR.05).
ALLOWED_WHILE_PENDING = frozenset({"GetConfiguration", "ChangeConfiguration", "GetVariables", "SetVariables",
                                   "GetBaseReport", "GetReport", "TriggerMessage", "ExtendedTriggerMessage"})


class CommandRefused(ChargerCommandError):
    """The command cannot be sent (wrong state, unknown action, invalid payload)."""


def check_command(*, version: str, registration: str, action: str, payload: dict[str, Any]) -> None:
    if action not in CSMS_ACTIONS.get(version, frozenset()):
        raise CommandRefused(_not_sent(version, action))
    if registration == "Rejected":
        raise CommandRefused("the charger's BootNotification was rejected; the CSMS may not initiate messages")
    if registration != "Accepted" and action not in ALLOWED_WHILE_PENDING:
        raise CommandRefused(f"the charger is {registration}: only configuration and reports may be sent")
    try:
        validate(version, action, payload)
    except OcppError as exc:
        raise CommandRefused(f"invalid {action} payload for OCPP {version}: {exc.description}") from None


def _not_sent(version: str, action: str) -> str:
    """Why ``action`` is not sent to this charger, truthfully: another version's command, a message the
    charging station sends, or no message of the version at all."""
    refused = f"{action} is not a command the CSMS sends in OCPP {version}"
    elsewhere = [v for v, actions in CSMS_ACTIONS.items() if v != version and action in actions]
    if elsewhere:
        return f"{refused}: it is an OCPP {' and '.join(elsewhere)} command, and this charger speaks OCPP {version}"
    if version in CSMS_ACTIONS and action in known_actions(version):
        return f"{refused}: the charging station sends it"
    return f"{refused}: OCPP {version} has no such message"


def remote_start(version: str, *, evse_id: int, id_token: str, remote_start_id: int) -> tuple[str, dict[str, Any]]:
    if version == "1.6":
        return "RemoteStartTransaction", {"connectorId": evse_id, "idTag": id_token}
    return "RequestStartTransaction", {"idToken": {"idToken": id_token, "type": "Central"},
                                       "remoteStartId": remote_start_id, "evseId": evse_id}


def remote_stop(version: str, *, transaction_id: str) -> tuple[str, dict[str, Any]]:
    if version == "1.6":
        if not transaction_id.lstrip("-").isdigit():
            raise CommandRefused("a 1.6 transactionId is an integer")
        return "RemoteStopTransaction", {"transactionId": int(transaction_id)}
    return "RequestStopTransaction", {"transactionId": transaction_id}


def reset(version: str, *, hard: bool) -> tuple[str, dict[str, Any]]:
    if version == "1.6":
        return "Reset", {"type": "Hard" if hard else "Soft"}
    return "Reset", {"type": "Immediate" if hard else "OnIdle"}


def change_availability(version: str, *, evse_id: int, operative: bool) -> tuple[str, dict[str, Any]]:
    if version == "1.6":
        return "ChangeAvailability", {"connectorId": evse_id, "type": "Operative" if operative else "Inoperative"}
    payload: dict[str, Any] = {"operationalStatus": "Operative" if operative else "Inoperative"}
    if evse_id > 0:
        payload["evse"] = {"id": evse_id}
    return "ChangeAvailability", payload


# -- OCPP 2.1 operator tasks: tariffs (local cost calculation) and DER control ----------------------


def _needs_21(version: str, what: str) -> None:
    if version != "2.1":
        raise CommandRefused(f"{what} need OCPP 2.1; this charger speaks OCPP {version}")


@dataclass(frozen=True, slots=True)
class Tariff:
    """The common tariff: one price per component, prices excluding tax, one tax rate on all of them
    (2.1 Part 2 block I, TariffType; a richer tariff goes through ``POST …/ocpp/SetDefaultTariff``)."""

    tariff_id: str
    currency: str                                  # ISO 4217
    energy_price_kwh: float | None = None
    charging_time_price_min: float | None = None
    idle_time_price_min: float | None = None
    fixed_fee: float | None = None
    tax_rate_pct: float | None = None
    description: str | None = None
    language: str | None = None                    # RFC 5646
    valid_from: str | None = None                  # RFC 3339; absent: active at once

    def ocpp(self) -> dict[str, Any]:
        """The 2.1 TariffType."""
        taxes = [{"type": "VAT", "tax": self.tax_rate_pct}] if self.tax_rate_pct is not None else None
        out: dict[str, Any] = {"tariffId": self.tariff_id, "currency": self.currency}
        for key, price_key, value in (("energy", "priceKwh", self.energy_price_kwh),
                                      ("chargingTime", "priceMinute", self.charging_time_price_min),
                                      ("idleTime", "priceMinute", self.idle_time_price_min),
                                      ("fixedFee", "priceFixed", self.fixed_fee)):
            if value is not None:
                out[key] = {"prices": [{price_key: value}], **({"taxRates": taxes} if taxes else {})}
        if len(out) == 2:
            raise CommandRefused("a tariff needs at least one price (energy, charging time, idle time or fixed fee)")
        if self.description:
            text: dict[str, Any] = {"format": "UTF8", "content": self.description}
            if self.language:
                text["language"] = self.language
            out["description"] = [text]
        if self.valid_from:
            out["validFrom"] = self.valid_from
        return out


def set_default_tariff(version: str, *, evse_id: int, tariff: Tariff) -> tuple[str, dict[str, Any]]:
    """The tariff the charger applies when no driver-specific one is given (evseId 0: every EVSE)."""
    _needs_21(version, "tariffs")
    return "SetDefaultTariff", {"evseId": evse_id, "tariff": tariff.ocpp()}


def get_tariffs(version: str, *, evse_id: int) -> tuple[str, dict[str, Any]]:
    _needs_21(version, "tariffs")
    return "GetTariffs", {"evseId": evse_id}


def clear_tariffs(version: str, *, tariff_ids: Sequence[str] = (),
                  evse_id: int | None = None) -> tuple[str, dict[str, Any]]:
    """Clear the given tariffs (none given: all), at one EVSE if given."""
    _needs_21(version, "tariffs")
    payload: dict[str, Any] = {}
    if tariff_ids:
        payload["tariffIds"] = list(tariff_ids)
    if evse_id is not None:
        payload["evseId"] = evse_id
    return "ClearTariffs", payload


def change_transaction_tariff(version: str, *, transaction_id: str, tariff: Tariff) -> tuple[str, dict[str, Any]]:
    _needs_21(version, "tariffs")
    return "ChangeTransactionTariff", {"transactionId": transaction_id, "tariff": tariff.ocpp()}


_DER_CURVES = ("FreqWatt", "HFMustTrip", "HFMayTrip", "HVMustTrip", "HVMomCess", "HVMayTrip", "LFMustTrip",
               "LVMustTrip", "LVMomCess", "LVMayTrip", "PowerMonitoringMustTrip", "VoltVar", "VoltWatt", "WattPF",
               "WattVar")
# The SetDERControlRequest field that carries the setting of each control type (2.1 Part 2 block R,
# DERControlEnumType): a curve for the curve types, a typed setting for the others.
DER_SETTING_FIELD: dict[str, str] = {
    **{control: "curve" for control in _DER_CURVES},
    "EnterService": "enterService", "FreqDroop": "freqDroop", "FixedPFAbsorb": "fixedPFAbsorb",
    "FixedPFInject": "fixedPFInject", "FixedVar": "fixedVar", "Gradients": "gradient",
    "LimitMaxDischarge": "limitMaxDischarge"}


def set_der_control(version: str, *, control_id: str, control_type: str, is_default: bool,
                    setting: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One DER control: ``setting`` is the 2.1 object of its type (a DERCurveType for the curve
    types), placed in the one field the control type uses."""
    _needs_21(version, "DER controls")
    field = DER_SETTING_FIELD.get(control_type)
    if field is None:
        raise CommandRefused(f"{control_type!r} is not an OCPP 2.1 DER control type")
    return "SetDERControl", {"isDefault": is_default, "controlId": control_id, "controlType": control_type,
                             field: setting}


def get_der_control(version: str, *, request_id: int, is_default: bool | None = None,
                    control_type: str | None = None, control_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """Ask for DER controls; the charger reports them in ReportDERControl messages with ``request_id``."""
    _needs_21(version, "DER controls")
    payload: dict[str, Any] = {"requestId": request_id}
    for key, value in (("isDefault", is_default), ("controlType", control_type), ("controlId", control_id)):
        if value is not None:
            payload[key] = value
    return "GetDERControl", payload


def clear_der_control(version: str, *, is_default: bool, control_type: str | None = None,
                      control_id: str | None = None) -> tuple[str, dict[str, Any]]:
    _needs_21(version, "DER controls")
    payload: dict[str, Any] = {"isDefault": is_default}
    for key, value in (("controlType", control_type), ("controlId", control_id)):
        if value is not None:
            payload[key] = value
    return "ClearDERControl", payload
