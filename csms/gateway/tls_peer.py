"""What the TLS layer says about a charger's client certificate (security profile 3, 2.0.1 A00.FR.4xx)."""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection


def client_certificate_cn(connection: ServerConnection) -> str | None:
    """The subject commonName of a verified client certificate (security profile 3)."""
    transport = connection.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def client_certificate_der(connection: ServerConnection) -> bytes | None:
    """The verified client certificate itself (DER), or None without TLS or without a client certificate."""
    transport = connection.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return bytes(der) if der else None
