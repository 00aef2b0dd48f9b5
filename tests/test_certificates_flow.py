"""Certificate signing and management against a running central system with a throw-away PKI:

* a 2.0.1 charger on security profile 3 sends a good CSR: SignCertificate Accepted *then* CertificateSigned
  (with the chain the operator CA signed); it accepts, the CSMS records it, triggers the renewal (the
  certificate expires within the lead time) and the charger connects with profile 3 using the new
  certificate;
* CSRs with the wrong CN or an RSA-1024 key are Rejected and recorded with the reason;
* Install/Delete/GetInstalledCertificateIds through the API reach the charger over its websocket and their
  answers are recorded;
* without a CA every CSR is Rejected and recorded (1.6).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.central import PASSWORD, running_central
from tests.csr_pki import client_context, make_csr, rsa_key
from tests.harness import make_shared_tmpdir
from tests.pki import Pki, make_pki
from tests.raw_security_charger import boot_payload, raw_charger

pytestmark = pytest.mark.integration

ORG = "Test CPO"


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = make_shared_tmpdir("csms-cert-pki-")
    try:
        yield make_pki(folder / "main")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else float("nan")


async def wait_for(api: httpx.AsyncClient, cp_id: str, check: Any, *, timeout_s: float = 15) -> dict[str, Any]:
    """Poll GET …/certificates until ``check(body)`` holds (a state, not a time)."""
    async with asyncio.timeout(timeout_s):
        while True:
            body: dict[str, Any] = (await api.get(f"/api/v1/charge-points/{cp_id}/certificates")).json()
            if check(body):
                return body
            await asyncio.sleep(0.05)


async def test_csr_signed_renewed_and_used_for_profile_3(db_url: str, pki: Pki) -> None:
    cp = "CS-CERT-1"
    async with running_central(db_url, security_profile=3, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert,
                               certificate_ca_cert_file=pki.ca_cert, certificate_ca_key_file=pki.folder / "ca.key",
                               certificate_organisation=ORG, certificate_validity_s=3600.0,
                               certificate_renewal_lead_time_s=7200.0,
                               certificate_renewal_check_interval_s=60.0) as central:
        await central.register(cp, security_profile=3, password=None)
        async with central.api() as api, raw_charger(central.ws_base, cp, "2.0.1",
                                                     ssl_context=pki.client_context(cp)) as charger:
            assert (await charger.call("BootNotification", boot_payload("2.0.1")))["status"] == "Accepted"

            # Refused CSRs: answered Rejected with the reason, recorded, never signed.
            wrong_cn, _ = make_csr("SOMEONE-ELSE", ORG)
            weak, _ = make_csr(cp, ORG, rsa_key(1024))
            for csr, reason in ((wrong_cn, "commonName 'SOMEONE-ELSE'"), (weak, "RSA key of 1024 bits")):
                answer = await charger.call("SignCertificate", {"csr": csr})
                assert answer["status"] == "Rejected"
                assert answer["statusInfo"]["additionalInfo"].startswith(reason)

            # A good CSR: Accepted first, then CertificateSigned with the chain.
            good, key = make_csr(cp, ORG)
            answer = await charger.call("SignCertificate", {"csr": good, "certificateType":
                                                            "ChargingStationCertificate"}, message_id="sign-good")
            assert answer == {"status": "Accepted"}
            mid, signed = await charger.expect_call("CertificateSigned")
            assert charger.received.index((3, "sign-good")) < charger.received.index((2, "CertificateSigned"))
            assert signed["certificateType"] == "ChargingStationCertificate"
            cert = x509.load_pem_x509_certificate(signed["certificateChain"].encode())
            assert cert.subject.rfc4514_string() == f"O={ORG},CN={cp}"
            await charger.reply(mid, {"status": "Accepted"})

            # Renewal: the certificate expires within the lead time, so the CSMS asks for a new CSR.
            trigger = await charger.answer("TriggerMessage", {"status": "Accepted"})
            assert trigger == {"requestedMessage": "SignChargingStationCertificate"}

            body = await wait_for(api, cp, lambda b: b["current"] is not None)
            serial = f"{cert.serial_number:X}"
            assert body["current"]["serial"] == serial and body["current"]["accepted"]  # noqa: PT018
            assert body["current"]["renewal_requested_at"] is not None
            requests = body["sign_requests"]
            assert [(r["status"], r["charger_status"]) for r in requests] == [
                ("Accepted", "Accepted"), ("Rejected", None), ("Rejected", None)]
            assert requests[1]["reason"].startswith("RSA key of 1024 bits")
            assert requests[2]["reason"].startswith("commonName 'SOMEONE-ELSE'")
            assert requests[0]["signed_serial"] == serial

            text = (await api.get("/metrics")).text
            assert metric(text, "csms_certificate_sign_requests_total", 'status="Accepted"') == 1
            assert metric(text, "csms_certificate_sign_requests_total", 'status="Rejected"') == 2
            assert metric(text, "csms_certificates_signed_total", 'outcome="Accepted"') == 1
            assert metric(text, "csms_charger_certificates_expiring") == 1
            soonest = metric(text, "csms_charger_certificate_soonest_expiry_timestamp_seconds",
                             'certificate_type="ChargingStationCertificate"')
            assert soonest == cert.not_valid_after_utc.timestamp()

            # Certificate management through the API, answered by the charger over its websocket.
            install = asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/certificates/install", json={
                "certificate_type": "CSMSRootCertificate", "certificate": pki.ca_cert.read_text()}))
            sent = await charger.answer("InstallCertificate", {"status": "Accepted"})
            assert sent["certificateType"] == "CSMSRootCertificate"
            assert (await install).json()["response"] == {"status": "Accepted"}

            hash_data = {"hashAlgorithm": "SHA256", "issuerNameHash": "aa" * 32, "issuerKeyHash": "bb" * 32,
                         "serialNumber": "1F"}
            listed = asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/certificates/installed",
                                                  json={"certificate_types": ["CSMSRootCertificate"]}))
            chain = [{"certificateType": "CSMSRootCertificate", "certificateHashData": hash_data}]
            asked = await charger.answer("GetInstalledCertificateIds",
                                         {"status": "Accepted", "certificateHashDataChain": chain})
            assert asked == {"certificateType": ["CSMSRootCertificate"]}
            listed_body = (await listed).json()
            assert listed_body["response"]["certificateHashDataChain"][0]["certificateHashData"] == hash_data

            delete = asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/certificates/delete", json={
                "hash_algorithm": "SHA256", "issuer_name_hash": "aa" * 32, "issuer_key_hash": "bb" * 32,
                "serial_number": "1F"}))
            assert (await charger.answer("DeleteCertificate", {"status": "NotFound"}))["certificateHashData"] == \
                hash_data
            assert (await delete).json()["response"] == {"status": "NotFound"}
            body = (await api.get(f"/api/v1/charge-points/{cp}/certificates")).json()
            assert [(c["action"], (c["response"] or {}).get("status")) for c in body["commands"]] == [
                ("DeleteCertificate", "NotFound"), ("GetInstalledCertificateIds", "Accepted"),
                ("InstallCertificate", "Accepted")]

        # The charger reconnects on security profile 3 with the certificate the CSMS signed.
        tls = client_context(pki.ca_cert, signed["certificateChain"], key, pki.folder)
        async with raw_charger(central.ws_base, cp, "2.0.1", ssl_context=tls) as renewed:
            assert (await renewed.call("BootNotification", boot_payload("2.0.1")))["status"] == "Accepted"


async def test_without_a_ca_every_csr_is_rejected_and_recorded(db_url: str) -> None:
    cp = "CS-CERT-NOCA"
    async with running_central(db_url, security_profile=1) as central:
        await central.register(cp)
        async with central.api() as api, raw_charger(central.ws_base, cp, "1.6", password=PASSWORD) as charger:
            assert (await charger.call("BootNotification", boot_payload("1.6")))["status"] == "Accepted"
            good, _ = make_csr(cp, ORG)
            assert await charger.call("SignCertificate", {"csr": good}) == {"status": "Rejected"}
            body = await wait_for(api, cp, lambda b: bool(b["sign_requests"]))
            assert [(r["status"], r["reason"], r["ocpp_version"]) for r in body["sign_requests"]] == [
                ("Rejected", "no CA is configured to sign charger certificates", "1.6")]
            assert body["current"] is None and body["certificates"] == []  # noqa: PT018
            # A 1.6 charger takes one certificate type per GetInstalledCertificateIds, in its own names.
            listed = asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/certificates/installed",
                                                  json={"certificate_types": ["CSMSRootCertificate"]}))
            asked = await charger.answer("GetInstalledCertificateIds", {"status": "NotFound"})
            assert asked == {"certificateType": "CentralSystemRootCertificate"}
            assert (await listed).json()["response"] == {"status": "NotFound"}
            refused = await api.post(f"/api/v1/charge-points/{cp}/certificates/installed", json={})
            assert refused.status_code == 400


async def test_16_csr_signed_and_renewal_asked_with_extended_trigger(db_url: str, pki: Pki) -> None:
    cp = "CS-CERT-16"
    async with running_central(db_url, security_profile=1, certificate_ca_cert_file=pki.ca_cert,
                               certificate_ca_key_file=pki.folder / "ca.key", certificate_organisation=ORG,
                               certificate_validity_s=3600.0, certificate_renewal_lead_time_s=7200.0) as central:
        await central.register(cp)
        async with central.api() as api, raw_charger(central.ws_base, cp, "1.6", password=PASSWORD) as charger:
            assert (await charger.call("BootNotification", boot_payload("1.6")))["status"] == "Accepted"
            good, _ = make_csr(cp, ORG, rsa_key(2048))
            assert await charger.call("SignCertificate", {"csr": good}, message_id="sign-16") == {"status": "Accepted"}
            mid, signed = await charger.expect_call("CertificateSigned")
            assert charger.received.index((3, "sign-16")) < charger.received.index((2, "CertificateSigned"))
            assert set(signed) == {"certificateChain"}                    # 1.6 has no certificateType
            await charger.reply(mid, {"status": "Accepted"})
            trigger = await charger.answer("ExtendedTriggerMessage", {"status": "Accepted"})
            assert trigger == {"requestedMessage": "SignChargePointCertificate"}
            body = await wait_for(api, cp, lambda b: b["current"] is not None)
            assert body["sign_requests"][0]["ocpp_version"] == "1.6"
            text = (await api.get("/metrics")).text
            assert metric(text, "csms_certificate_renewal_triggers_total", 'outcome="Accepted"') == 1
