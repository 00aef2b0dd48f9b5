"""Registry through the real command line (``csms … --database-url``) and the real HTTP API: an existing
id is changed field by field and never reset by omission; ``operational_since`` can be set per station
and per port (NEVI eligibility); OCPI ``country_code`` follows the site's country; a DC charger's default
connector is a DC one (issue 11, item 9)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
import websockets

from csms.store import countries
from tests.central import running_central
from tests.chargers import basic_auth
from tests.processes import csms_command

PASSWORD = "registry-cli-password-0123"
OCPI_TOKEN = "registry-ocpi-token-0123456789"


# --- Pure: the defaults by country -------------------------------------------------------------

def test_default_connector_follows_power_type_and_country() -> None:
    assert countries.default_standard("DC", "IND") == "IEC_62196_T2_COMBO"
    assert countries.default_standard("DC", "DEU") == "IEC_62196_T2_COMBO"
    assert countries.default_standard("DC", None) == "IEC_62196_T2_COMBO"
    assert countries.default_standard("DC", "USA") == "IEC_62196_T1_COMBO"
    assert countries.default_standard("DC", "JPN") == "CHADEMO"
    assert countries.default_standard("AC_3_PHASE", "GBR") == "IEC_62196_T2"
    assert countries.default_standard("AC_1_PHASE", "USA") == "IEC_62196_T1"
    assert countries.default_format("IEC_62196_T2_COMBO") == countries.default_format("IEC_62196_T1") == "CABLE"
    assert countries.default_format("IEC_62196_T2") == "SOCKET"
    assert (countries.alpha2("IND"), countries.alpha2("DEU"), countries.alpha2("GBR")) == ("IN", "DE", "GB")
    assert countries.alpha2("XYZ") is None
    assert not countries.is_alpha3("ZZZ")


# --- Integration -----------------------------------------------------------------------------

async def _cli(db_url: str, *args: str) -> str:
    return await asyncio.to_thread(csms_command, [*args, "--database-url", db_url])


async def _cli_fails(db_url: str, *args: str) -> str:
    with pytest.raises(RuntimeError) as info:
        await _cli(db_url, *args)
    return str(info.value)


async def _row(db_url: str, sql: str, *params: Any) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(sql, *params)
    finally:
        await conn.close()
    assert row is not None, sql
    return dict(row)


async def _boot(ws_base: str, cp_id: str, password: str) -> str | int:
    """The BootNotification answer a real 1.6 charger gets, or the HTTP status its handshake is refused with."""
    try:
        async with websockets.connect(f"{ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth(cp_id, password), open_timeout=10) as ws:
            await ws.send(json.dumps([2, "b1", "BootNotification", {"chargePointVendor": "V",
                                                                     "chargePointModel": "M"}]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return str(reply[2]["status"])
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


async def _ocpi(http: httpx.AsyncClient, location_id: str) -> dict[str, Any]:
    response = await http.get(f"/ocpi/cpo/2.2.1/locations/{location_id}",
                              headers={"Authorization": f"Token {OCPI_TOKEN}"})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _local_midnight(day: date, zone: str) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone))


@pytest.mark.integration
async def test_cli_locations_add_again_changes_only_the_options_given(db_url: str) -> None:
    since = date(2024, 1, 1)
    out = await _cli(db_url, "locations", "add", "L-IN", "--name", "Pune", "--country", "IND",
                     "--time-zone", "Asia/Kolkata", "--latitude", "18.52", "--longitude", "73.85", "--public",
                     "--operational-since", since.isoformat())
    assert "created" in out
    # Re-running with only a new name must not clear the public flag or operational_since.
    out = await _cli(db_url, "locations", "add", "L-IN", "--name", "Pune Hub")
    assert "updated: name" in out
    row = await _row(db_url, "SELECT name, country, time_zone, is_public, operational_since, latitude "
                             "FROM locations WHERE id = 'L-IN'")
    assert row == {"name": "Pune Hub", "country": "IND", "time_zone": "Asia/Kolkata", "is_public": True,
                   "operational_since": _local_midnight(since, "Asia/Kolkata"), "latitude": 18.52}
    assert "unchanged" in await _cli(db_url, "locations", "add", "L-IN", "--city", "")
    # A new id needs a name; bad codes are refused with a message, nothing is written.
    assert "a name is required" in await _cli_fails(db_url, "locations", "add", "L-NONE", "--public")
    assert "alpha-3" in await _cli_fails(db_url, "locations", "add", "L-BAD", "--name", "x", "--country", "XYZ")
    assert "time zone" in await _cli_fails(db_url, "locations", "add", "L-BAD", "--name", "x",
                                           "--time-zone", "Mars/Base")
    beyond = await _cli_fails(db_url, "locations", "add", "L-BAD", "--name", "x", "--latitude", "200")
    assert "csms:" in beyond
    assert "Traceback" not in beyond                        # the database's refusal, as a message
    async with running_central(db_url, ocpi_token=OCPI_TOKEN) as central, \
            httpx.AsyncClient(base_url=central.http_base, timeout=30) as http:
        public = (await http.get("/open-data/ocpi/locations")).json()["data"]
        assert [(loc["id"], loc["name"], loc["country"], loc["country_code"]) for loc in public] == [
            ("L-IN", "Pune Hub", "IND", "IN")]
        await _cli(db_url, "locations", "add", "L-IN", "--no-public")
        assert (await _ocpi(http, "L-IN"))["publish"] is False
    row = await _row(db_url, "SELECT is_public, operational_since FROM locations WHERE id = 'L-IN'")
    assert row == {"is_public": False, "operational_since": _local_midnight(since, "Asia/Kolkata")}
    await _cli(db_url, "locations", "add", "L-IN", "--operational-since", "none")
    assert (await _row(db_url, "SELECT operational_since FROM locations WHERE id = 'L-IN'")) == {
        "operational_since": None}


@pytest.mark.integration
async def test_cli_charge_points_add_again_keeps_credential_profile_admission_and_location(db_url: str) -> None:
    await _cli(db_url, "locations", "add", "L-DE", "--name", "Berlin", "--country", "DEU",
               "--time-zone", "Europe/Berlin", "--latitude", "52.52", "--longitude", "13.40")
    out = await _cli(db_url, "charge-points", "add", "CP-DE", "--location", "L-DE", "--power-type", "DC",
                     "--rated-power-w", "150000", "--password", PASSWORD, "--admission", "pending", "--tolerant")
    assert "registered with 1 EVSE" in out
    connector_sql = ("SELECT standard, format, power_type, max_voltage_v, max_amperage_a, rated_power_w "
                     "FROM connectors WHERE charge_point_id = 'CP-DE'")
    # DC with no standard given: CCS2 on a cable in Germany, never a Type 2 socket.
    assert await _row(db_url, connector_sql) == {"standard": "IEC_62196_T2_COMBO", "format": "CABLE",
                                                 "power_type": "DC", "max_voltage_v": 1000,
                                                 "max_amperage_a": 150, "rated_power_w": 150000.0}
    charger_sql = ("SELECT location_id, credential_hash, security_profile, admission, tolerant "
                   "FROM charge_points WHERE id = 'CP-DE'")
    before = await _row(db_url, charger_sql)
    out = await _cli(db_url, "charge-points", "add", "CP-DE", "--rated-power-w", "50000")
    assert "password:" not in out                        # the charger's credential is not replaced
    assert await _row(db_url, charger_sql) == before
    assert await _row(db_url, connector_sql) == {"standard": "IEC_62196_T2_COMBO", "format": "CABLE",
                                                 "power_type": "DC", "max_voltage_v": 1000,
                                                 "max_amperage_a": 50, "rated_power_w": 50000.0}
    assert (before["admission"], before["tolerant"], before["location_id"]) == ("pending", True, "L-DE")
    assert "unknown location" in await _cli_fails(db_url, "charge-points", "add", "CP-DE", "--location", "NOPE")
    async with running_central(db_url, ocpi_token=OCPI_TOKEN) as central, \
            httpx.AsyncClient(base_url=central.http_base, timeout=30) as http:
        # The real charger still gets in with its password and is still held Pending.
        assert await _boot(central.ws_base, "CP-DE", PASSWORD) == "Pending"
        site = await _ocpi(http, "L-DE")
        assert site["country_code"] == "DE"
        [connector] = site["evses"][0]["connectors"]
        assert (connector["standard"], connector["format"], connector["max_electric_power"]) == (
            "IEC_62196_T2_COMBO", "CABLE", 50000)


@pytest.mark.integration
async def test_cli_operational_since_per_port_makes_it_nevi_eligible(db_url: str) -> None:
    zone = "America/Los_Angeles"
    await _cli(db_url, "locations", "add", "L-US", "--name", "LA", "--country", "USA", "--time-zone", zone,
               "--latitude", "34.05", "--longitude", "-118.24")
    out = await _cli(db_url, "charge-points", "add", "CP-US", "--location", "L-US", "--evses", "2",
                     "--power-type", "DC", "--password", PASSWORD)
    assert "registered with 2 EVSE(s)" in out
    today = datetime.now(UTC).date()
    report_month = (today.replace(day=1) - timedelta(days=40)).strftime("%Y-%m")   # an ended month
    since = today.replace(day=1) - timedelta(days=3 * 365)
    evse_sql = "SELECT operational_since FROM evses WHERE charge_point_id = 'CP-US' AND evse_id = $1"
    async with running_central(db_url, ocpi_token=OCPI_TOKEN) as central, central.api() as api, \
            httpx.AsyncClient(base_url=central.http_base, timeout=30) as http:

        async def eligible(evse_id: int) -> bool:
            response = await api.get(f"/api/v1/reporting/ports/CP-US/{evse_id}/uptime",
                                     params={"method": "nevi", "report_month": report_month})
            assert response.status_code == 200, response.text
            return bool(response.json()["eligible"])

        assert (await eligible(1), await eligible(2)) == (False, False)      # registered today
        # One port, then every port of the charger, from the command line.
        await _cli(db_url, "charge-points", "add", "CP-US", "--evse-id", "2", "--operational-since", since.isoformat())
        assert (await eligible(1), await eligible(2)) == (False, True)
        assert await _row(db_url, evse_sql, 2) == {"operational_since": _local_midnight(since, zone)}
        await _cli(db_url, "charge-points", "add", "CP-US", "--operational-since", since.isoformat())
        assert (await eligible(1), await eligible(2)) == (True, True)
        assert await _row(db_url, evse_sql, 1) == {"operational_since": _local_midnight(since, zone)}
        # Re-registering the station does not take its ports out of NEVI.
        await _cli(db_url, "locations", "add", "L-US", "--name", "Los Angeles")
        assert (await eligible(1), await eligible(2)) == (True, True)
        # A US DC charger defaults to CCS1 on a cable; the party country is the site's.
        site = await _ocpi(http, "L-US")
        assert site["country_code"] == "US"
        assert {(c["standard"], c["format"]) for e in site["evses"] for c in e["connectors"]} == {
            ("IEC_62196_T1_COMBO", "CABLE")}
        assert await _boot(central.ws_base, "CP-US", PASSWORD) == "Accepted"


@pytest.mark.integration
async def test_api_registration_changes_only_the_fields_given(db_url: str) -> None:
    async with running_central(db_url, ocpi_token=OCPI_TOKEN) as central, central.api() as api, \
            httpx.AsyncClient(base_url=central.http_base, timeout=30) as http:
        created = await api.post("/api/v1/locations", json={
            "id": "L-GB", "name": "Leeds", "country": "GBR", "latitude": 53.8, "longitude": -1.55,
            "time_zone": "Europe/London", "is_public": True, "operational_since": "2024-03-01"})
        assert created.status_code == 201, created.text
        assert created.json()["created"] is True
        again = await api.post("/api/v1/locations", json={"id": "L-GB", "name": "Leeds Hub"})
        assert (again.status_code, again.json()["created"], again.json()["changed"]) == (201, False, ["name"])
        site = await _ocpi(http, "L-GB")
        assert (site["name"], site["publish"], site["country"], site["country_code"]) == (
            "Leeds Hub", True, "GBR", "GB")
        since_sql = "SELECT operational_since FROM locations WHERE id = 'L-GB'"
        assert await _row(db_url, since_sql) == {"operational_since": _local_midnight(date(2024, 3, 1),
                                                                                      "Europe/London")}
        missing = await api.post("/api/v1/locations", json={"id": "L-NEW", "is_public": True})
        assert missing.status_code == 400
        assert "name is required" in missing.text
        assert (await api.post("/api/v1/locations", json={"id": "L-X", "name": "x", "country": "XYZ"})
                ).status_code == 422

        first = await api.post("/api/v1/charge-points", json={
            "id": "CP-GB", "location_id": "L-GB", "password": PASSWORD, "admission": "reject", "tolerant": True,
            "evses": [{"evse_id": 1, "connectors": [{"power_type": "DC", "rated_power_w": 100000}]}]})
        assert first.status_code == 201, first.text
        assert "password" not in first.json()
        charger_sql = ("SELECT location_id, credential_hash, security_profile, admission, tolerant "
                       "FROM charge_points WHERE id = 'CP-GB'")
        connector_sql = "SELECT standard, format, power_type, rated_power_w FROM connectors WHERE charge_point_id = $1"
        before = await _row(db_url, charger_sql)
        assert await _row(db_url, connector_sql, "CP-GB") == {
            "standard": "IEC_62196_T2_COMBO", "format": "CABLE", "power_type": "DC", "rated_power_w": 100000.0}
        # Only a port's operational_since: the charger and its connector keep everything else.
        second = await api.post("/api/v1/charge-points", json={
            "id": "CP-GB", "evses": [{"evse_id": 1, "operational_since": "2023-06-01T00:00:00Z"}]})
        assert second.status_code == 201, second.text
        assert "password" not in second.json()
        assert await _row(db_url, charger_sql) == before
        assert await _row(db_url, connector_sql, "CP-GB") == {
            "standard": "IEC_62196_T2_COMBO", "format": "CABLE", "power_type": "DC", "rated_power_w": 100000.0}
        assert await _row(db_url, "SELECT operational_since FROM evses WHERE charge_point_id = 'CP-GB'") == {
            "operational_since": datetime(2023, 6, 1, tzinfo=UTC)}
        assert await _boot(central.ws_base, "CP-GB", PASSWORD) == "Rejected"
        # null clears a nullable field; a field left out is kept.
        cleared = await api.post("/api/v1/locations", json={"id": "L-GB", "operational_since": None})
        assert cleared.json()["changed"] == ["operational_since"]
        assert await _row(db_url, since_sql) == {"operational_since": None}
        assert (await _ocpi(http, "L-GB"))["publish"] is True
        unknown = await api.post("/api/v1/charge-points", json={"id": "CP-GB", "location_id": "NOPE"})
        assert unknown.status_code == 400
        assert "unknown location" in unknown.text
