"""Security profiles 1–3: every wrong identity is refused before the upgrade; the right one is admitted."""

from __future__ import annotations

import shutil
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from csms.run.compose import build_ssl_context
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth
from tests.harness import make_shared_tmpdir
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.integration

HEX_KEY = "00112233445566778899aabbccddeeff01234567"  # a 1.6 AuthorizationKey: 20 bytes as 40 hex digits


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = make_shared_tmpdir("csms-pki-")
    try:
        yield make_pki(folder / "main")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def rogue_pki(pki: Pki) -> Pki:
    return make_pki(pki.folder.parent / "rogue", "Rogue Root")


async def _status(central: RunningCentral, cp_id: str, headers: dict[str, str],
                  ssl_context: ssl.SSLContext | None = None) -> int:
    """101 if the websocket opened, else the HTTP status of the refusal."""
    try:
        async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=headers, ssl=ssl_context, open_timeout=10):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_profile1_basic_auth(db_url: str) -> None:
    async with running_central(db_url, security_profile=1) as central:
        await central.register("SP1")
        await central.register("SP1-OTHER")
        await central.register("SP1-HEX", password=HEX_KEY)
        await central.register("SP2-ONLY", security_profile=2)
        assert await _status(central, "SP1", basic_auth("SP1", PASSWORD)) == 101
        assert await _status(central, "SP1", {}) == 401                                  # no credentials
        assert await _status(central, "SP1", basic_auth("SP1", PASSWORD + "x")) == 401   # wrong key
        assert await _status(central, "SP1", basic_auth("SP1-OTHER", PASSWORD)) == 401   # id ≠ username
        assert await _status(central, "NOBODY", basic_auth("NOBODY", PASSWORD)) == 404   # unknown id (R3)
        assert await _status(central, "SP1", {"Authorization": "Basic !!!"}) == 401      # malformed header
        # 1.6 AuthorizationKey: the raw bytes (1.6J §6.2.2 example) and the hex text both work (R21).
        assert await _status(central, "SP1-HEX", basic_auth("SP1-HEX", bytes.fromhex(HEX_KEY))) == 101
        assert await _status(central, "SP1-HEX", basic_auth("SP1-HEX", HEX_KEY)) == 101
        assert await _status(central, "SP1-HEX", basic_auth("SP1-HEX", bytes.fromhex(HEX_KEY)[:-1] + b"\0")) == 401
        # A charger upgraded to profile 2 may not come back on profile 1 (A05.FR.07).
        assert await _status(central, "SP2-ONLY", basic_auth("SP2-ONLY", PASSWORD)) == 403
        stored = await _stored_hash(central, "SP1")
        assert stored.startswith("$argon2id$")
        assert PASSWORD not in stored


async def _stored_hash(central: RunningCentral, cp_id: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(central.db_url)
    try:
        return str(await conn.fetchval("SELECT credential_hash FROM charge_points WHERE id = $1", cp_id))
    finally:
        await conn.close()


async def test_profile2_tls_with_basic_auth(db_url: str, pki: Pki) -> None:
    async with running_central(db_url, security_profile=2, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key) as central:
        await central.register("SP2", security_profile=2)
        await central.register("SP2-B", security_profile=2)
        tls = pki.client_context()
        assert await _status(central, "SP2", basic_auth("SP2", PASSWORD), tls) == 101
        assert await _status(central, "SP2", {}, tls) == 401
        assert await _status(central, "SP2", basic_auth("SP2", "wrong-password-wrong"), tls) == 401
        assert await _status(central, "SP2", basic_auth("SP2-B", PASSWORD), tls) == 401
        assert await _status(central, "UNKNOWN", basic_auth("UNKNOWN", PASSWORD), tls) == 404
        # TLS below 1.2 is refused (A00.FR.313–315), and TLS compression is off (A00.FR.321).
        server_ctx = build_ssl_context(central.system.settings)
        assert server_ctx is not None
        assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert server_ctx.options & ssl.OP_NO_COMPRESSION
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old_tls = pki.client_context()
            old_tls.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            old_tls.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, OSError)):
            await _status(central, "SP2", basic_auth("SP2", PASSWORD), old_tls)


async def test_profile3_client_certificate_must_name_the_charger(db_url: str, pki: Pki, rogue_pki: Pki) -> None:
    async with running_central(db_url, security_profile=3, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert) as central:
        await central.register("SP3", security_profile=3, password=None)
        await central.register("SP3-OTHER", security_profile=3, password=None)
        assert await _status(central, "SP3", {}, pki.client_context("SP3")) == 101
        assert await _status(central, "SP3", {}, pki.client_context("SP3-OTHER")) == 403     # cert ≠ id
        assert await _status(central, "NOPE", {}, pki.client_context("NOPE")) == 404        # unknown id
        with pytest.raises((ssl.SSLError, OSError, websockets.InvalidMessage)):  # no client certificate
            await _status(central, "SP3", {}, pki.client_context())
        with pytest.raises((ssl.SSLError, OSError, websockets.InvalidMessage)):  # signed by another CA
            await _status(central, "SP3", {}, pki.client_context("SP3", other_ca=rogue_pki))


def test_tls_profiles_need_their_files() -> None:
    from schemas.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="tls_cert_file"):
        Settings(security_profile=2)
    with pytest.raises(SettingsError, match="tls_client_ca_file"):
        Settings(security_profile=3, tls_cert_file=Path("a"), tls_key_file=Path("b"))
