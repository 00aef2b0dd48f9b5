"""Throw-away keys, CSRs and CAs for the certificate tests (made in the test, never stored)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_csr(cn: str | None, org: str | None, key: PrivateKey | None = None) -> tuple[str, PrivateKey]:
    key = key or ec_key()
    names = []
    if cn is not None:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if org is not None:
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii"), key


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(folder: Path, *, ca: bool = True, days: float = 30, name: str = "Operator CA"
            ) -> tuple[Path, Path]:
    """A self-signed (CA) certificate and its key, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name.replace(' ', '_')}.pem", folder / f"{name.replace(' ', '_')}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


def client_context(ca_cert: Path, chain_pem: str, key: PrivateKey, folder: Path) -> ssl.SSLContext:
    """A TLS client context presenting the signed certificate (security profile 3)."""
    cert_path, key_path = folder / "signed-client.pem", folder / "signed-client.key"
    cert_path.write_text(chain_pem, encoding="ascii")
    key_path.write_bytes(key_pem(key))
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_cert))
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
