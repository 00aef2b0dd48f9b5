"""Operator commands to chargers: version-neutral requests mapped onto each OCPP version.

Rules applied before anything is sent:

* the charger must be connected to this node, else the command fails at once;
* after BootNotification Rejected the CSMS initiates nothing (B03.FR.03; 1.6 §4.2; R31);
* while Pending only configuration and reporting commands may be sent, and no remote
  start/stop (B02.FR.01/05; 1.6 §4.2; R30);
* the payload must match the official request schema of the charger's version.
"""

from __future__ import annotations

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
        "UpdateFirmware"}),
}
CSMS_ACTIONS["2.1"] = frozenset(a for a in known_actions("2.1") if a in CSMS_ACTIONS["2.0.1"])

ALLOWED_WHILE_PENDING = frozenset({"GetConfiguration", "ChangeConfiguration", "GetVariables", "SetVariables",
                                   "GetBaseReport", "GetReport", "TriggerMessage", "ExtendedTriggerMessage"})


class CommandRefused(ChargerCommandError):
    """The command cannot be sent (wrong state, unknown action, invalid payload)."""


def check_command(*, version: str, registration: str, action: str, payload: dict[str, Any]) -> None:
    if action not in CSMS_ACTIONS.get(version, frozenset()):
        raise CommandRefused(f"{action} is not a command the CSMS sends in OCPP {version}")
    if registration == "Rejected":
        raise CommandRefused("the charger's BootNotification was rejected; the CSMS may not initiate messages")
    if registration != "Accepted" and action not in ALLOWED_WHILE_PENDING:
        raise CommandRefused(f"the charger is {registration}: only configuration and reports may be sent")
    try:
        validate(version, action, payload)
    except OcppError as exc:
        raise CommandRefused(f"invalid {action} payload for OCPP {version}: {exc.description}") from None


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
