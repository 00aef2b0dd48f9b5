"""The pure parts of certificate signing: CSR checks (csms/ocpp/certificates.py), the operator CA
(csms/security/ca.py) and the SignCertificate / SecurityEventNotification handlers with an in-memory
``SecurityServices`` — no database, no socket."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from csms.ocpp.certificates import CsrPolicy, SecurityEvent, SignDecision, SignRequest, check_csr
from csms.ocpp.context import ProtocolState
from csms.ocpp.framing import Call
from csms.ocpp.session import OcppSession
from csms.ocpp.types import ChargePointId, OcppVersion
from csms.ocpp.validation import validate
from csms.security.ca import CaError, OperatorCa
from tests.csr_pki import ec_key, make_ca, make_csr, rsa_key
from tests.test_ocpp_session import MemoryServices

POLICY = CsrPolicy(organisation="Test CPO")


@pytest.mark.parametrize(("cn", "org", "key", "reason"), [
    ("CS-1", "Test CPO", None, ""),                                           # EC P-256
    ("CS-1", "Test CPO", "p384", ""),
    ("CS-1", "Test CPO", "rsa2048", ""),
    ("CS-2", "Test CPO", None, "commonName 'CS-2' is not the charging station identity"),
    (None, "Test CPO", None, "commonName None"),
    ("CS-1", "Other CPO", None, "organizationName 'Other CPO' is not the operator's"),
    ("CS-1", None, None, "organizationName None"),
    ("CS-1", "Test CPO", "rsa1024", "RSA key of 1024 bits; at least 2048 required"),
    ("CS-1", "Test CPO", "p521", "EC curve secp521r1 is not allowed"),
])
def test_csr_checks(cn: str | None, org: str | None, key: str | None, reason: str) -> None:
    keys = {None: None, "p384": ec_key(ec.SECP384R1()), "rsa2048": rsa_key(2048), "rsa1024": rsa_key(1024),
            "p521": ec_key(ec.SECP521R1())}
    pem, _ = make_csr(cn, org, keys[key])
    verdict = check_csr(pem, "CS-1", POLICY)
    assert verdict.ok == (reason == "")
    assert verdict.reason.startswith(reason)
    assert (verdict.csr is not None) == verdict.ok


def test_csr_that_is_not_one_is_refused() -> None:
    assert check_csr("hello", "CS-1", POLICY).reason == "not a PEM-encoded PKCS#10 certificate signing request"
    pem, _ = make_csr("CS-1", "Test CPO")
    # A request whose signed content was changed after signing: the self-signature no longer matches.
    body = pem.splitlines()
    der = bytearray(base64.b64decode("".join(body[1:-1])))
    index = bytes(der).find(b"Test CPO")
    der[index:index + 8] = b"Test CPX"
    tampered = "\n".join([body[0], base64.b64encode(bytes(der)).decode(), body[-1]])
    verdict = check_csr(tampered, "CS-1", CsrPolicy(organisation="Test CPX"))
    assert verdict.reason == "the CSR's signature is not valid"


def test_the_minimum_rsa_size_is_a_setting() -> None:
    pem, _ = make_csr("CS-1", "Test CPO", rsa_key(2048))
    assert not check_csr(pem, "CS-1", CsrPolicy("Test CPO", min_rsa_bits=3072)).ok


def test_ca_signs_a_client_certificate(tmp_path: Path) -> None:
    ca = OperatorCa.load(*make_ca(tmp_path, days=10))
    pem, key = make_csr("CS-1", "Test CPO")
    verdict = check_csr(pem, "CS-1", POLICY)
    assert verdict.csr is not None
    issued = ca.sign(verdict.csr, validity_s=86400 * 365)   # a year asked, the CA lives 10 days
    cert = x509.load_pem_x509_certificate(issued.pem_chain.encode())
    assert issued.pem_chain.count("BEGIN CERTIFICATE") == 1      # a self-signed root is not sent along
    assert cert.subject.rfc4514_string() == "O=Test CPO,CN=CS-1" == issued.subject
    assert cert.issuer == ca.certificate.subject
    assert issued.not_after == ca.certificate.not_valid_after_utc == cert.not_valid_after_utc
    assert issued.serial == f"{cert.serial_number:X}"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    cert.verify_directly_issued_by(ca.certificate)
    short = ca.sign(verdict.csr, validity_s=3600)
    assert dt.timedelta(minutes=59) < short.not_after - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=1)


def test_ca_files_must_be_a_ca(tmp_path: Path) -> None:
    cert, key = make_ca(tmp_path / "a")
    other_cert, other_key = make_ca(tmp_path / "b", name="Other")
    leaf_cert, leaf_key = make_ca(tmp_path / "c", ca=False, name="Leaf")
    with pytest.raises(CaError, match="is not the key of"):
        OperatorCa.load(cert, other_key)
    with pytest.raises(CaError, match="not a CA certificate"):
        OperatorCa.load(leaf_cert, leaf_key)
    with pytest.raises(CaError, match="cannot load"):
        OperatorCa.load(tmp_path / "missing.pem", key)
    with pytest.raises(CaError, match="expired"):
        OperatorCa.load(other_cert, other_key, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=60))


# --- the handlers, with an in-memory SecurityServices ------------------------------------------------------


@dataclass
class MemorySecurity:
    policy: CsrPolicy | None = POLICY
    requests: list[SignRequest] = field(default_factory=list)
    events: dict[tuple[str, str, str, str], SecurityEvent] = field(default_factory=dict)

    @property
    def csr_policy(self) -> CsrPolicy | None:
        return self.policy

    async def submit_csr(self, request: SignRequest) -> SignDecision:
        self.requests.append(request)
        return SignDecision("Accepted") if request.verdict.ok else SignDecision("Rejected", request.verdict.reason)

    async def store_security_event(self, event: SecurityEvent) -> bool:
        key = (event.charge_point_id, event.type, event.raw_timestamp, event.tech_info or "")
        new = key not in self.events
        self.events.setdefault(key, event)
        return new


class ServicesWithSecurity(MemoryServices):
    def __init__(self, security: MemorySecurity | None = None) -> None:
        super().__init__()
        self.security = security or MemorySecurity()


def _session(version: OcppVersion, services: MemoryServices) -> OcppSession:
    state = ProtocolState(charge_point_id=ChargePointId("CS-1"), version=version, registration="Accepted")
    return OcppSession(state=state, services=services, validate_responses=True)


async def _call(session: OcppSession, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    outcome = await session.handle_call(Call("m1", action, payload), dt.datetime.now(dt.UTC))
    frame = orjson.loads(outcome.frame)
    assert frame[0] == 3, frame
    validate(session.state.version, action, frame[2], response=True)
    result: dict[str, Any] = frame[2]
    return result


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_sign_certificate_answers(version: OcppVersion) -> None:
    services = ServicesWithSecurity()
    session = _session(version, services)
    good, _ = make_csr("CS-1", "Test CPO")
    bad, _ = make_csr("CS-1", "Test CPO", rsa_key(1024))
    assert await _call(session, "SignCertificate", {"csr": good}) == {"status": "Accepted"}
    refused = await _call(session, "SignCertificate", {"csr": bad})
    assert refused["status"] == "Rejected"
    if version != "1.6":
        assert refused["statusInfo"] == {"reasonCode": "InvalidCSR",
                                         "additionalInfo": "RSA key of 1024 bits; at least 2048 required"}
    assert [r.verdict.ok for r in services.security.requests] == [True, False]
    assert {r.certificate_type for r in services.security.requests} == {"ChargingStationCertificate"}
    if version != "1.6":  # no ISO 15118 PKI: a V2G certificate is refused, and recorded
        v2g = await _call(session, "SignCertificate", {"csr": good, "certificateType": "V2GCertificate"})
        assert v2g["status"] == "Rejected"
        assert services.security.requests[-1].certificate_type == "V2GCertificate"


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_without_a_ca_every_csr_is_rejected(version: OcppVersion) -> None:
    good, _ = make_csr("CS-1", "Test CPO")
    assert (await _call(_session(version, MemoryServices()), "SignCertificate", {"csr": good}))["status"] == \
        "Rejected"
    services = ServicesWithSecurity(security=MemorySecurity(policy=None))
    assert (await _call(_session(version, services), "SignCertificate", {"csr": good}))["status"] == "Rejected"
    assert services.security.requests[0].verdict.reason == "no CA is configured to sign charger certificates"


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_security_event_is_stored_before_the_answer(version: OcppVersion) -> None:
    services = ServicesWithSecurity()
    session = _session(version, services)
    event = {"type": "TamperDetectionActivated", "timestamp": "2026-01-02T03:04:05.000Z", "techInfo": "lid"}
    assert await _call(session, "SecurityEventNotification", event) == {}
    assert await _call(session, "SecurityEventNotification", event) == {}    # a retry
    await _call(session, "SecurityEventNotification", {"type": "InvalidMessages",
                                                       "timestamp": "2026-01-02T03:04:06.000Z"})
    stored = list(services.security.events.values())
    assert [(e.type, e.critical) for e in stored] == [("TamperDetectionActivated", True), ("InvalidMessages", False)]
    assert stored[0].occurred_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
