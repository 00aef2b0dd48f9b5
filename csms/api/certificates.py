"""Charger certificates: what was signed for each charger (serial, subject, expiry) and the certificate
commands (2.0.1 M03 GetInstalledCertificateIds, M04 DeleteCertificate, M05 InstallCertificate; 1.6 Security
Whitepaper §3.3–3.5), each answer recorded with the request."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, status
from pydantic import AliasChoices, BaseModel, Field

from csms.api.common import CpId, UtcTime, database
from csms.common.errors import ChargerBusyError, ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.gateway import remote
from csms.gateway.node_messages import RemoteNodeError
from csms.gateway.outgoing import ChargerCallError
from csms.gateway.server import Gateway
from csms.ocpp import commands
from csms.store import certificates as store

# The 2.x name of the CSMS root and its 1.6 Security Whitepaper name (CertificateUseEnumType).
_V16_NAMES = {"CSMSRootCertificate": "CentralSystemRootCertificate"}

InstallType = Literal["CSMSRootCertificate", "ManufacturerRootCertificate", "V2GRootCertificate",
                      "MORootCertificate", "CentralSystemRootCertificate"]
ListType = Literal["CSMSRootCertificate", "ManufacturerRootCertificate", "V2GRootCertificate", "MORootCertificate",
                   "V2GCertificateChain", "CentralSystemRootCertificate"]


class SignedCertificateOut(BaseModel):
    serial: str = Field(description="upper-case hex")
    certificate_type: str
    subject: str
    issuer: str
    not_before: UtcTime
    not_after: UtcTime
    issued_at: UtcTime
    accepted: bool = Field(description="the charger answered CertificateSigned Accepted")
    renewal_requested_at: UtcTime | None
    origin: Literal["signed", "presented"] = Field(
        description="signed: by the operator CA on a SignCertificate; presented: first seen as the charger's TLS "
                    "client certificate (security profile 3), e.g. a factory certificate")
    last_presented_at: UtcTime | None = Field(description="the last profile 3 handshake that presented it")
    last_evidence_at: UtcTime = Field(description="last_presented_at, else issued_at: the newest is current")


class SignRequestOut(BaseModel):
    sign_request_id: int = Field(validation_alias=AliasChoices("sign_request_id", "id"))
    received_at: UtcTime
    ocpp_version: str
    certificate_type: str
    csr_subject: str
    status: str = Field(description="how SignCertificate was answered")
    reason: str = Field(description="why it was Rejected")
    signed_serial: str | None
    sent_at: UtcTime | None
    charger_status: str | None = Field(description="the charger's CertificateSigned answer, or not_delivered")
    charger_detail: str


class CertificateCommandOut(BaseModel):
    action: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    error: str
    sent_at: UtcTime


class ChargerCertificatesOut(BaseModel):
    charge_point_id: str
    current: SignedCertificateOut | None = Field(
        description="the station certificate in use: the one last presented at a profile 3 handshake, or one "
                    "signed and accepted since")
    certificates: list[SignedCertificateOut]
    sign_requests: list[SignRequestOut]
    commands: list[CertificateCommandOut]


class InstallIn(BaseModel):
    certificate_type: InstallType = Field(description="2.x InstallCertificateUseEnumType; CSMSRootCertificate "
                                                      "is sent to a 1.6 charger as CentralSystemRootCertificate")
    certificate: str = Field(min_length=1, max_length=10000, description="PEM-encoded X.509 certificate")


class HashDataIn(BaseModel):
    hash_algorithm: Literal["SHA256", "SHA384", "SHA512"]
    issuer_name_hash: str = Field(min_length=1, max_length=128)
    issuer_key_hash: str = Field(min_length=1, max_length=128)
    serial_number: str = Field(min_length=1, max_length=40)


class InstalledIn(BaseModel):
    certificate_types: list[ListType] | None = Field(None, max_length=8,
                                                     description="absent: all (2.x); a 1.6 charger takes one")


class CertificateCommandResultOut(BaseModel):
    charge_point_id: str
    action: str
    ocpp_version: str
    response: dict[str, Any]


def _v16(name: str) -> str:
    return _V16_NAMES.get(name, name)


def build_certificates_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["certificates"])
    db = database(pool)

    async def send(cp_id: str, build: Any) -> CertificateCommandResultOut:
        try:
            target = await remote.locate(gateway, cp_id) if gateway is not None else None
        except RemoteNodeError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}) from None
        if target is None or gateway is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"charge point {cp_id} is not connected to any node")
        action, payload = build(target.ocpp_version)
        conn = db()
        try:
            response = await remote.send(gateway, target, action, payload)
        except commands.CommandRefused as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except (ChargerCommandError, RemoteNodeError) as exc:
            await store.record_command(conn, charge_point_id=cp_id, action=action, request=payload, response=None,
                                       error=f"{type(exc).__name__}: {exc}")
            raise _http_error(exc) from None
        await store.record_command(conn, charge_point_id=cp_id, action=action, request=payload, response=response)
        return CertificateCommandResultOut(charge_point_id=cp_id, action=action, ocpp_version=target.ocpp_version,
                                           response=response)

    @router.get("/charge-points/{cp_id}/certificates")
    async def charger_certificates(cp_id: CpId) -> ChargerCertificatesOut:
        """Certificates signed for the charger (newest first), its SignCertificate requests with how each was
        answered, and the certificate commands sent to it with their answers (50 of each at most)."""
        conn = db()
        certs = [SignedCertificateOut(**row) for row in await store.charger_certificates(conn, cp_id)]
        accepted = [c for c in certs if c.accepted and c.certificate_type == "ChargingStationCertificate"]
        # The same rule as the expiry metric (csms.store.certificates): the newest evidence of use is current.
        current = max(accepted, key=lambda c: (c.last_evidence_at, c.not_after), default=None)
        return ChargerCertificatesOut(
            charge_point_id=cp_id, current=current, certificates=certs,
            sign_requests=[SignRequestOut(**row) for row in await store.charger_requests(conn, cp_id)],
            commands=[CertificateCommandOut(**row) for row in await store.charger_commands(conn, cp_id)])

    @router.post("/charge-points/{cp_id}/certificates/install")
    async def install_certificate(cp_id: CpId, body: InstallIn) -> CertificateCommandResultOut:
        """InstallCertificate (2.0.1 M05; 1.6 Whitepaper §3.5): e.g. a new CSMS root before the server
        certificate changes."""
        def build(version: str) -> tuple[str, dict[str, Any]]:
            kind = _v16(body.certificate_type) if version == "1.6" else body.certificate_type
            return "InstallCertificate", {"certificateType": kind, "certificate": body.certificate}
        return await send(cp_id, build)

    @router.post("/charge-points/{cp_id}/certificates/delete")
    async def delete_certificate(cp_id: CpId, body: HashDataIn) -> CertificateCommandResultOut:
        """DeleteCertificate (2.0.1 M04; 1.6 Whitepaper §3.4) of the certificate with this hash data (as
        GetInstalledCertificateIds reports it)."""
        def build(version: str) -> tuple[str, dict[str, Any]]:
            return "DeleteCertificate", {"certificateHashData": {
                "hashAlgorithm": body.hash_algorithm, "issuerNameHash": body.issuer_name_hash,
                "issuerKeyHash": body.issuer_key_hash, "serialNumber": body.serial_number}}
        return await send(cp_id, build)

    @router.post("/charge-points/{cp_id}/certificates/installed")
    async def installed_certificates(cp_id: CpId, body: InstalledIn) -> CertificateCommandResultOut:
        """GetInstalledCertificateIds (2.0.1 M03; 1.6 Whitepaper §3.3): the charger's answer lists them."""
        def build(version: str) -> tuple[str, dict[str, Any]]:
            kinds = body.certificate_types or []
            if version == "1.6":
                if len(kinds) != 1:
                    raise HTTPException(status.HTTP_400_BAD_REQUEST, "a 1.6 charger lists one certificate type "
                                                                     "per request: give exactly one")
                return "GetInstalledCertificateIds", {"certificateType": _v16(kinds[0])}
            return "GetInstalledCertificateIds", {"certificateType": list(kinds)} if kinds else {}
        return await send(cp_id, build)

    return router


def _http_error(exc: Exception) -> HTTPException:
    if isinstance(exc, RemoteNodeError):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, ChargerTimeoutError):
        return HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(exc))
    if isinstance(exc, ChargerCallError):
        return HTTPException(status.HTTP_502_BAD_GATEWAY, {"error": exc.code, "description": exc.description})
    if isinstance(exc, ChargerBusyError):
        return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc))
    if isinstance(exc, ChargerOfflineError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))

