"""A charger's own certificate counts even when this CSMS did not sign it (issue 14 item 4).

A 2.0.1 charger connects on security profile 3 with a factory certificate (signed by the client CA, not
through SignCertificate): the certificate is recorded at the handshake (origin ``presented``), shown as the
charger's current certificate with its expiry, counted by the expiry metric, and — within the renewal lead
time — the CSMS asks for a CSR (TriggerMessage SignChargingStationCertificate, A03) just as for one it signed.
A second handshake with the same certificate adds no row.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.central import running_central
from tests.harness import make_shared_tmpdir
from tests.pki import Pki, make_pki
from tests.raw_security_charger import boot_payload, raw_charger
from tests.test_certificates_flow import metric

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = make_shared_tmpdir("csms-cert-presented-")
    try:
        yield make_pki(folder / "main")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _until(api: httpx.AsyncClient, path: str, check: Any, *, timeout_s: float = 15) -> Any:
    """Poll until ``check`` holds for the answer (a state, not a time)."""
    async with asyncio.timeout(timeout_s):
        while True:
            response = await api.get(path)
            body = response.json() if path != "/metrics" else response.text
            if check(body):
                return body
            await asyncio.sleep(0.05)


async def test_a_factory_certificate_is_recorded_counted_and_renewed(db_url: str, pki: Pki) -> None:
    cp = "CS-FACTORY-1"
    cert_path, key_path = pki.issue_client(cp)
    factory = x509.load_pem_x509_certificate(cert_path.read_bytes())
    tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    tls.load_cert_chain(cert_path, key_path)
    # The factory certificate is valid for 2 days: inside a 3-day lead time, so it is due for renewal.
    async with running_central(db_url, security_profile=3, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert,
                               certificate_ca_cert_file=pki.ca_cert, certificate_ca_key_file=pki.folder / "ca.key",
                               certificate_organisation="Test CPO", certificate_renewal_lead_time_s=3 * 86400.0,
                               certificate_renewal_check_interval_s=60.0) as central:
        await central.register(cp, security_profile=3, password=None)
        async with central.api() as api:
            async with raw_charger(central.ws_base, cp, "2.0.1", ssl_context=tls) as charger:
                assert (await charger.call("BootNotification", boot_payload("2.0.1")))["status"] == "Accepted"
                # Renewal reaches a charger whose certificate the CSMS never signed.
                trigger = await charger.answer("TriggerMessage", {"status": "Accepted"})
                assert trigger == {"requestedMessage": "SignChargingStationCertificate"}

            body = await _until(api, f"/api/v1/charge-points/{cp}/certificates",
                                lambda b: b["current"] is not None and b["current"]["renewal_requested_at"])
            current = body["current"]
            assert current["origin"] == "presented"
            assert current["serial"] == f"{factory.serial_number:X}"
            assert current["subject"] == factory.subject.rfc4514_string()
            assert current["not_after"] == factory.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert current["last_presented_at"] is not None and current["accepted"]  # noqa: PT018
            text = await _until(api, "/metrics",
                                lambda t: metric(t, "csms_charger_certificates_expiring") == 1)
            soonest = metric(text, "csms_charger_certificate_soonest_expiry_timestamp_seconds",
                             'certificate_type="ChargingStationCertificate"')
            assert soonest == factory.not_valid_after_utc.timestamp()

            # The same certificate again: still one row.
            async with raw_charger(central.ws_base, cp, "2.0.1", ssl_context=tls) as again:
                assert (await again.call("BootNotification", boot_payload("2.0.1")))["status"] == "Accepted"
            body = (await api.get(f"/api/v1/charge-points/{cp}/certificates")).json()
            assert [(c["serial"], c["origin"]) for c in body["certificates"]] == [(current["serial"], "presented")]
