"""A throw-away PKI for TLS tests: a CA, a server certificate for 127.0.0.1, client certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    folder: Path

    def client_context(self, client_cn: str | None = None, *, other_ca: Pki | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        if client_cn is not None:
            signer = other_ca or self
            cert, key = signer.issue_client(client_cn)
            ctx.load_cert_chain(cert, key)
        return ctx

    def issue_client(self, cn: str) -> tuple[Path, Path]:
        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test CPO")]),
                     key.public_key(), ca_cert.subject, ca_key, ca=False)  # type: ignore[arg-type]
        safe = "".join(c if c.isalnum() else "_" for c in cn)
        cert_path, key_path = self.folder / f"client-{safe}.pem", self.folder / f"client-{safe}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return cert_path, key_path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
          signer: ec.EllipticCurvePrivateKey, *, ca: bool, san: x509.SubjectAlternativeName | None = None
          ) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(folder: Path, name: str = "Test Root") -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_cert = _cert(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
                        server_key.public_key(), ca_name, ca_key, ca=False,
                        san=x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    (folder / "ca.key").write_bytes(_key_pem(ca_key))
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(_key_pem(server_key))
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder)
