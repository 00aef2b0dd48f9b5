"""Certificate signing and security events as the protocol core sees them: pure CSR checks and the small
service interface the handlers await (``SecurityServices``).

SignCertificate (2.0.1 A02/A03, 1.6 Security Whitepaper ed. 3 §3.2): the CSMS answers Accepted only when it
can process the request (A02.FR.11/12) — a CA is configured and the CSR passes every check below — then
signs it and sends CertificateSigned as a separate CALL *after* this answer (A02 sequence; never awaited
inside the charger's receive loop, ``csms.gateway.certificates``). The checks (2.0.1 Part 2 A00, "Certificate
Properties"; 1.6 Security Whitepaper §3.1.2):

* a PEM-encoded PKCS#10 request whose self-signature is valid;
* subject commonName = the charging station's identity, organizationName = the operator's (CSO) name;
* key: RSA of at least ``min_rsa_bits`` (2048 by default) or EC on P-256 / P-384.

``SecurityServices`` is found on the handler's ``Services`` object as its ``security`` attribute (a separate
protocol, so that the registry services stay as they are); without it, CSRs are Rejected and security
events only logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from csms.ocpp.types import ChargePointId, OcppVersion

SignStatus = Literal["Accepted", "Rejected"]

ALLOWED_CURVES = frozenset({"secp256r1", "secp384r1"})   # P-256, P-384


@dataclass(frozen=True, slots=True)
class CsrPolicy:
    organisation: str
    min_rsa_bits: int = 2048
    curves: frozenset[str] = ALLOWED_CURVES


@dataclass(frozen=True, slots=True)
class CsrVerdict:
    """The outcome of the pure checks; ``reason`` says why a CSR is refused ("" when it is not)."""

    ok: bool
    reason: str
    subject: str = ""
    csr: x509.CertificateSigningRequest | None = None


def _refused(reason: str, subject: str = "") -> CsrVerdict:
    return CsrVerdict(False, reason[:200], subject)


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def check_csr(pem: str, charge_point_id: str, policy: CsrPolicy) -> CsrVerdict:
    """Check a charger's CSR against the operator's policy (see the module doc)."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8", "replace"))
    except (ValueError, UnsupportedAlgorithm):
        return _refused("not a PEM-encoded PKCS#10 certificate signing request")
    try:
        subject = csr.subject.rfc4514_string()
        signature_ok = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return _refused(f"unreadable CSR: {type(exc).__name__}")
    if not signature_ok:
        return _refused("the CSR's signature is not valid", subject)
    cn = _single(csr.subject, NameOID.COMMON_NAME)
    if cn != charge_point_id:
        return _refused(f"commonName {cn!r} is not the charging station identity", subject)
    org = _single(csr.subject, NameOID.ORGANIZATION_NAME)
    if org != policy.organisation:
        return _refused(f"organizationName {org!r} is not the operator's", subject)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < policy.min_rsa_bits:
            return _refused(f"RSA key of {key.key_size} bits; at least {policy.min_rsa_bits} required", subject)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in policy.curves:
            return _refused(f"EC curve {key.curve.name} is not allowed (P-256, P-384)", subject)
    else:
        return _refused(f"{type(key).__name__.removeprefix('_')} keys are not signed (RSA or EC only)", subject)
    return CsrVerdict(True, "", subject, csr)


@dataclass(frozen=True, slots=True)
class SignRequest:
    """A SignCertificate as received, with the pure verdict; the service records it and, if it can, signs."""

    charge_point_id: ChargePointId
    version: OcppVersion
    received_at: datetime
    certificate_type: str        # ChargingStationCertificate (1.6: always) or V2GCertificate
    verdict: CsrVerdict
    request_id: int | None = None   # 2.1 SignCertificateRequest.requestId, echoed in CertificateSigned


@dataclass(frozen=True, slots=True)
class SignDecision:
    status: SignStatus
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One SecurityEventNotification (2.0.1 A04; 1.6 Security Whitepaper §2.7)."""

    charge_point_id: ChargePointId
    version: OcppVersion
    received_at: datetime
    type: str
    occurred_at: datetime        # the charger's timestamp, or the receive time when implausible (flags)
    raw_timestamp: str           # as sent: what makes a retry the same event
    tech_info: str | None
    critical: bool
    flags: int = 0


@runtime_checkable
class SecurityServices(Protocol):
    @property
    def csr_policy(self) -> CsrPolicy | None:
        """The operator's CSR policy, or None when no CA is configured (every CSR is then Rejected)."""

    async def submit_csr(self, request: SignRequest) -> SignDecision:
        """Record the request (durably, before the answer) and, when accepted, schedule its signing and the
        CertificateSigned that follows the answer."""

    async def store_security_event(self, event: SecurityEvent) -> bool:
        """Store the event durably (a retry is stored once); True when it was new."""


def security_services(services: Any) -> SecurityServices | None:
    found = getattr(services, "security", None)
    return found if isinstance(found, SecurityServices) else None
