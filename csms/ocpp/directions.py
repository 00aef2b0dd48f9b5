"""Which side sends each OCPP action, per version: the message lists of 1.6J §3 / the Security Whitepaper
ed. 3, 2.0.1 Part 2 and 2.1 Part 2 (each action's "sent by" in its Messages chapter).

A schema says what a message looks like, not who sends it; this table does. ``DataTransfer`` goes both
ways. ``tests/test_ocpp_coverage.py`` checks that every known action (a schema of the ``ocpp`` package) is
in exactly one direction here, or both for DataTransfer.
"""

from __future__ import annotations

from csms.ocpp.validation import known_actions

BOTH_WAYS = frozenset({"DataTransfer"})

_V16 = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
    "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification", "StopTransaction",
    # Security Whitepaper ed. 3
    "LogStatusNotification", "SecurityEventNotification", "SignCertificate", "SignedFirmwareStatusNotification"})

_V201 = frozenset({
    "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer", "FirmwareStatusNotification",
    "Get15118EVCertificate", "GetCertificateStatus", "Heartbeat", "LogStatusNotification", "MeterValues",
    "NotifyChargingLimit", "NotifyCustomerInformation", "NotifyDisplayMessages", "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule", "NotifyEvent", "NotifyMonitoringReport", "NotifyReport",
    "PublishFirmwareStatusNotification", "ReportChargingProfiles", "ReservationStatusUpdate",
    "SecurityEventNotification", "SignCertificate", "StatusNotification", "TransactionEvent"})

_V21_NEW = frozenset({
    "BatterySwap", "ClosePeriodicEventStream", "GetCertificateChainStatus", "NotifyDERAlarm", "NotifyDERStartStop",
    "NotifyPeriodicEventStream", "NotifyPriorityCharging", "NotifySettlement", "OpenPeriodicEventStream",
    "PullDynamicScheduleUpdate", "ReportDERControl", "VatNumberValidation"})

CHARGER_ACTIONS: dict[str, frozenset[str]] = {"1.6": _V16, "2.0.1": _V201, "2.1": _V201 | _V21_NEW}


def charger_actions(version: str) -> frozenset[str]:
    """Actions a charging station sends to the CSMS in ``version``."""
    return CHARGER_ACTIONS[version]


def csms_actions(version: str) -> frozenset[str]:
    """Actions the CSMS sends to a charging station in ``version`` (every other known action, and DataTransfer)."""
    return (known_actions(version) - CHARGER_ACTIONS[version]) | (BOTH_WAYS & known_actions(version))


def introduced_in(action: str) -> str | None:
    """The first version that knows ``action`` (None: no version does)."""
    for version in ("1.6", "2.0.1", "2.1"):
        if action in known_actions(version):
            return version
    return None
