"""The operator CA that signs charger certificates (OCPP 2.0.1 A02/A03; 1.6 Security Whitepaper ed. 3 §3).

The CA key and certificate are given by path (settings ``certificate_ca_cert_file``,
``certificate_ca_key_file``); the central system never creates a CA of its own. Without them
every SignCertificate is answered Rejected (A02.FR.11/12: the CSMS cannot process the request).

A signed certificate keeps the CSR's subject (already checked by ``csms.ocpp.certificates``),
is an end-entity client certificate (BasicConstraints CA:false, extendedKeyUsage clientAuth, as
the charger presents it in the TLS handshake of security profile 3, 2.0.1 Part 2 A00.FR.3xx),
is valid for ``validity_s`` but never beyond the CA's own expiry, and carries the key identifiers
strict X.509 verification asks for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from csms.common.errors import ConfigurationError

# The signature of issued certificates may start this long before the signing, for chargers whose clock is a
# little behind (a certificate "not yet valid" would end every TLS handshake of the charger).
BACKDATE_S = 300


class CaError(ConfigurationError):
    """The configured CA files cannot be used (unreadable, not a CA, key and certificate do not match)."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate the CA signed, with what the API and the expiry metric show of it."""

    pem_chain: str          # the certificate, then the CA certificate unless that is a self-signed root
    serial: str             # upper-case hex, as 2.0.1 CertificateHashDataType.serialNumber writes it
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime


def describe(cert: x509.Certificate) -> IssuedCertificate:
    """Serial, subject, issuer and validity of any certificate (e.g. one a charger presents)."""
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return IssuedCertificate(pem_chain=pem, serial=f"{cert.serial_number:X}", subject=cert.subject.rfc4514_string(),
                             issuer=cert.issuer.rfc4514_string(), not_before=cert.not_valid_before_utc,
                             not_after=cert.not_valid_after_utc)


class OperatorCa:
    """A CA certificate and its private key, loaded once at start-up."""

    def __init__(self, cert: x509.Certificate, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key
        self_signed = cert.issuer == cert.subject
        self._chain_tail = "" if self_signed else cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, *, now: dt.datetime | None = None) -> OperatorCa:
        """The CA of these files; CaError when they cannot sign charger certificates."""
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise CaError(f"cannot load the CA from {cert_file} and {key_file}: {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CaError(f"{key_file}: the CA key must be RSA or EC")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CaError(f"{key_file} is not the key of {cert_file}")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise CaError(f"{cert_file} is not a CA certificate (no BasicConstraints)") from None
        if not constraints.ca:
            raise CaError(f"{cert_file} is not a CA certificate (BasicConstraints CA:false)")
        if cert.not_valid_after_utc <= (now or dt.datetime.now(dt.UTC)):
            raise CaError(f"{cert_file} has expired ({cert.not_valid_after_utc:%Y-%m-%d})")
        return cls(cert, key)

    def sign(self, csr: x509.CertificateSigningRequest, *, validity_s: float,
             now: dt.datetime | None = None) -> IssuedCertificate:
        """Sign a checked CSR as a charging station (client) certificate."""
        moment = now or dt.datetime.now(dt.UTC)
        public_key = csr.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError("only RSA and EC keys are signed")
        not_after = min(moment + dt.timedelta(seconds=validity_s), self._cert.not_valid_after_utc)
        usage = x509.KeyUsage(digital_signature=True, key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                              content_commitment=False, data_encipherment=False, key_agreement=False,
                              key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
        builder = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self._cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(moment - dt.timedelta(seconds=BACKDATE_S)).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(usage, critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._key.public_key()), critical=False))
        cert = builder.sign(self._key, hashes.SHA256())
        issued = describe(cert)
        return IssuedCertificate(pem_chain=issued.pem_chain + self._chain_tail, serial=issued.serial,
                                 subject=issued.subject, issuer=issued.issuer, not_before=issued.not_before,
                                 not_after=issued.not_after)
