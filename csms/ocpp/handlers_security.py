"""SignCertificate and SecurityEventNotification, shared by the 1.6 (Security Whitepaper ed. 3) and the 2.x
handler tables.

Security events: the standardized list is OCPP 2.0.1 Part 2 Appendix 1 "Security Events" (ed. 3 v1.4); the
1.6 Security Whitepaper uses the same list with "CentralSystem"/"ChargePoint" in four names. A type outside
these lists is stored as sent and counted as "Other" (a charger must not be able to mint metric labels).
"""

from __future__ import annotations

from typing import Any

from csms.ocpp.certificates import (
    CsrVerdict,
    SecurityEvent,
    SignRequest,
    check_csr,
    security_services,
)
from csms.ocpp.context import Context, Reply, clean_text
from csms.ocpp.handlers_common import log_event
from csms.ocpp.normalise import event_time

# Appendix 1, column "Critical" (Yes): implemented critical events SHALL be pushed to the CSMS.
CRITICAL_EVENTS = frozenset({
    "FirmwareUpdated", "SettingSystemTime", "StartupOfTheDevice", "ResetOrReboot", "SecurityLogWasCleared",
    "MemoryExhaustion", "TamperDetectionActivated", "InvalidFirmwareSignature", "InvalidFirmwareSigningCertificate",
    "InvalidCsmsCertificate", "InvalidChargingStationCertificate", "InvalidTLSVersion", "InvalidTLSCipherSuite",
    "MaintenanceLoginAccepted", "MaintenanceLoginFailed",
    # 1.6 Security Whitepaper names of the same events.
    "InvalidCentralSystemCertificate", "InvalidChargePointCertificate",
})
NON_CRITICAL_EVENTS = frozenset({
    "FailedToAuthenticateAtCsms", "CsmsFailedToAuthenticate", "ReconfigurationOfSecurityParameters",
    "InvalidMessages", "AttemptedReplayAttacks",
    "FailedToAuthenticateAtCentralSystem", "CentralSystemFailedToAuthenticate",   # 1.6 names
})
KNOWN_EVENTS = CRITICAL_EVENTS | NON_CRITICAL_EVENTS


def event_label(event_type: str) -> str:
    """The metric label of an event type: the standardized name, or "Other"."""
    return event_type if event_type in KNOWN_EVENTS else "Other"


async def sign_certificate(ctx: Context, p: dict[str, Any]) -> Reply:
    """A02/A03 (1.6 Security Whitepaper §3.2): answer after the pure CSR check; CertificateSigned follows."""
    security = security_services(ctx.services)
    policy = security.csr_policy if security is not None else None
    version = ctx.state.version
    # 1.6 knows one certificate; 2.x: absent means both uses, signed as the station certificate (A02.FR.02).
    cert_type = "ChargingStationCertificate" if version == "1.6" else clean_text(
        p.get("certificateType") or "ChargingStationCertificate", 32)
    if security is None or policy is None:
        status, reason = "Rejected", "no CA is configured to sign charger certificates"
        if security is not None:
            await security.submit_csr(SignRequest(ctx.state.charge_point_id, version, ctx.received_at, cert_type,
                                                  CsrVerdict(False, reason)))
    else:
        verdict = check_csr(str(p.get("csr", "")), ctx.state.charge_point_id, policy)
        if verdict.ok and cert_type != "ChargingStationCertificate":
            verdict = CsrVerdict(False, "only ChargingStationCertificate is signed (no ISO 15118 V2G PKI)",
                                    verdict.subject)
        request_id = p.get("requestId")
        decision = await security.submit_csr(SignRequest(
            ctx.state.charge_point_id, version, ctx.received_at, cert_type, verdict,
            request_id=request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None))
        status, reason = decision.status, decision.reason
    payload: dict[str, Any] = {"status": status}
    if status == "Rejected" and version != "1.6":
        payload["statusInfo"] = {"reasonCode": "InvalidCSR" if policy is not None else "NotSupported",
                                 "additionalInfo": reason[:512]}
    # No bus event: the request is recorded by the service before this answer, and an answer without events
    # is written to the socket before any other task runs — so it precedes the CertificateSigned.
    return Reply(payload)


async def security_event_notification(ctx: Context, p: dict[str, Any]) -> Reply:
    """A04: stored (idempotently, before the answer: it is the charger's data) and always confirmed
    (A04.FR.03)."""
    event_type = clean_text(p.get("type"), 50)
    raw_ts = p.get("timestamp")
    at = event_time(raw_ts, ctx.received_at)
    tech = p.get("techInfo")
    event = SecurityEvent(charge_point_id=ctx.state.charge_point_id, version=ctx.state.version,
                          received_at=ctx.received_at, type=event_type, occurred_at=at.time,
                          raw_timestamp=clean_text(raw_ts, 64), tech_info=clean_text(tech, 255) if tech else None,
                          critical=event_type in CRITICAL_EVENTS, flags=at.flags)
    security = security_services(ctx.services)
    if security is not None:
        await security.store_security_event(event)
    return Reply({}, [log_event(ctx, "SecurityEventNotification", p)])
