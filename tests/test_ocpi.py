"""OCPI 2.2.1 Locations (CPO sender, read-only) and the public open-data feed (csms/api/ocpi.py)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import fastapi
import httpx
import pytest

from csms.api.ocpi import build_ocpi_router, evse_status, latest_of, ocpi_datetime, ocpi_status, parse_ocpi_datetime
from csms.store.registry import (
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    add_charge_point,
    upsert_location,
)

TOKEN = "s3cret-ocpi-token"
LIST = "/ocpi/cpo/2.2.1/locations"
OPEN = "/open-data/ocpi/locations"
HOURS = {"twentyfourseven": False,
         "regular_hours": [{"weekday": d, "period_begin": "06:00", "period_end": "22:00"} for d in range(1, 8)]}

# --- A small OCPI 2.2.1 object validator (mod_locations §8.3, types §16) -------------------------

STATUSES = {"AVAILABLE", "BLOCKED", "CHARGING", "INOPERATIVE", "OUTOFORDER", "PLANNED", "REMOVED", "RESERVED",
            "UNKNOWN"}
CONNECTOR_TYPES_EMITTED = {"IEC_62196_T2", "IEC_62196_T2_COMBO", "IEC_62196_T1", "IEC_62196_T1_COMBO", "CHADEMO"}
FORMATS = {"SOCKET", "CABLE"}
POWER_TYPES = {"AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC"}
DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z")
LATITUDE_RE = re.compile(r"-?[0-9]{1,2}\.[0-9]{5,7}")
LONGITUDE_RE = re.compile(r"-?[0-9]{1,3}\.[0-9]{5,7}")


def _field(obj: dict[str, Any], name: str, kind: type, *, required: bool, max_len: int | None = None) -> Any:
    if name not in obj:
        assert not required, f"missing required {name}: {obj}"
        return None
    value = obj[name]
    assert isinstance(value, kind), f"{name}={value!r}"
    assert kind is bool or not isinstance(value, bool), f"{name}={value!r}"
    if max_len is not None:
        assert len(obj[name]) <= max_len, f"{name} longer than {max_len}: {value!r}"
    return obj[name]


def _datetime(obj: dict[str, Any], name: str) -> datetime:
    text = _field(obj, name, str, required=True, max_len=25)
    assert DATETIME_RE.fullmatch(text), text
    return datetime.fromisoformat(text)


def validate_connector(c: dict[str, Any]) -> None:
    assert set(c) <= {"id", "standard", "format", "power_type", "max_voltage", "max_amperage",
                      "max_electric_power", "tariff_ids", "terms_and_conditions", "last_updated"}, c
    _field(c, "id", str, required=True, max_len=36)
    assert _field(c, "standard", str, required=True) in CONNECTOR_TYPES_EMITTED
    assert _field(c, "format", str, required=True) in FORMATS
    assert _field(c, "power_type", str, required=True) in POWER_TYPES
    assert _field(c, "max_voltage", int, required=True) > 0
    assert _field(c, "max_amperage", int, required=True) > 0
    power = _field(c, "max_electric_power", int, required=False)
    assert power is None or power > 0
    _datetime(c, "last_updated")


def validate_evse(e: dict[str, Any]) -> None:
    assert set(e) <= {"uid", "evse_id", "status", "status_schedule", "capabilities", "connectors", "floor_level",
                      "coordinates", "physical_reference", "directions", "parking_restrictions", "images",
                      "last_updated"}, e
    _field(e, "uid", str, required=True, max_len=36)
    _field(e, "evse_id", str, required=False, max_len=48)
    assert _field(e, "status", str, required=True) in STATUSES
    connectors = _field(e, "connectors", list, required=True)
    assert connectors, "an EVSE needs at least one connector"
    for c in connectors:
        validate_connector(c)
    assert len({c["id"] for c in connectors}) == len(connectors)
    evse_updated = _datetime(e, "last_updated")
    assert all(evse_updated >= datetime.fromisoformat(c["last_updated"]) for c in connectors)


def validate_location(loc: dict[str, Any]) -> None:
    _field(loc, "country_code", str, required=True, max_len=2)
    assert len(loc["country_code"]) == 2
    _field(loc, "party_id", str, required=True, max_len=3)
    assert len(loc["party_id"]) == 3
    _field(loc, "id", str, required=True, max_len=36)
    _field(loc, "publish", bool, required=True)
    _field(loc, "name", str, required=False, max_len=255)
    _field(loc, "address", str, required=True, max_len=45)
    _field(loc, "city", str, required=True, max_len=45)
    _field(loc, "postal_code", str, required=False, max_len=10)
    _field(loc, "state", str, required=False, max_len=20)
    assert re.fullmatch(r"[A-Z]{3}", _field(loc, "country", str, required=True, max_len=3))
    coordinates = _field(loc, "coordinates", dict, required=True)
    assert set(coordinates) == {"latitude", "longitude"}
    assert LATITUDE_RE.fullmatch(_field(coordinates, "latitude", str, required=True, max_len=10))
    assert LONGITUDE_RE.fullmatch(_field(coordinates, "longitude", str, required=True, max_len=11))
    _field(loc, "time_zone", str, required=True, max_len=255)
    hours = _field(loc, "opening_times", dict, required=False)
    if hours is not None:
        assert isinstance(hours["twentyfourseven"], bool)
        if not hours["twentyfourseven"]:
            for period in hours["regular_hours"]:
                assert 1 <= period["weekday"] <= 7
                assert re.fullmatch(r"([0-1][0-9]|2[0-3]):[0-5][0-9]", period["period_begin"])
    evses = _field(loc, "evses", list, required=False) or []
    for e in evses:
        validate_evse(e)
    assert len({e["uid"] for e in evses}) == len(evses)
    location_updated = _datetime(loc, "last_updated")
    assert all(location_updated >= datetime.fromisoformat(e["last_updated"]) for e in evses)


def validate_envelope(body: dict[str, Any], status_code: int = 1000) -> Any:
    assert body["status_code"] == status_code
    assert isinstance(body["status_message"], str)
    assert DATETIME_RE.fullmatch(body["timestamp"])
    return body.get("data")


# --- Pure unit tests ---------------------------------------------------------------------------

@pytest.mark.parametrize(("ocpp", "ocpi"), [
    ("Available", "AVAILABLE"), ("Preparing", "CHARGING"), ("Charging", "CHARGING"), ("SuspendedEV", "CHARGING"),
    ("SuspendedEVSE", "CHARGING"), ("Finishing", "CHARGING"), ("Occupied", "CHARGING"), ("Reserved", "RESERVED"),
    ("Unavailable", "INOPERATIVE"), ("Faulted", "OUTOFORDER"), (None, "UNKNOWN"), ("Bogus", "UNKNOWN"),
])
def test_ocpi_status_mapping(ocpp: str | None, ocpi: str) -> None:
    assert ocpi_status(ocpp) == ocpi


def test_evse_status_rules() -> None:
    assert evse_status(["Charging"], live=False) == "UNKNOWN"
    assert evse_status([]) == "UNKNOWN"
    assert evse_status([None]) == "UNKNOWN"
    assert evse_status(["Available", "Faulted"]) == "OUTOFORDER"          # worst connector
    assert evse_status(["Available", "Unavailable"]) == "INOPERATIVE"
    assert evse_status(["Reserved", "Available"]) == "RESERVED"
    assert evse_status(["Faulted", "SuspendedEV"]) == "CHARGING"         # in use wins
    assert evse_status(["Charging"], charger_status="Faulted") == "OUTOFORDER"  # connector 0 applies to all
    assert evse_status(["Available"], charger_status="Unavailable") == "INOPERATIVE"
    assert evse_status(["Faulted"], charger_status="Available") == "OUTOFORDER"


def test_last_updated_propagation_and_format() -> None:
    base = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    newer = base + timedelta(seconds=5)
    assert latest_of(base) == base.replace(microsecond=123000)
    assert latest_of(base, [None, newer, base - timedelta(days=1)]) == newer.replace(microsecond=123000)
    connector = latest_of(base, [newer])
    evse = latest_of(base - timedelta(days=2), [connector])
    location = latest_of(base - timedelta(days=3), [evse])
    assert location == evse == connector
    assert ocpi_datetime(base) == "2024-05-01T12:00:00.123Z"
    assert ocpi_datetime(datetime(2024, 5, 1, 14, 0, tzinfo=UTC)) == "2024-05-01T14:00:00Z"
    assert parse_ocpi_datetime("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_ocpi_datetime("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_ocpi_datetime(ocpi_datetime(base)) == latest_of(base)


# --- Integration: the real database ------------------------------------------------------------

@dataclass
class Env:
    pool: asyncpg.Pool
    client: httpx.AsyncClient
    live: set[str]
    now: list[float]

    async def get(self, path: str, token: str | None = TOKEN, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Token {token}"} if token is not None else {}
        return await self.client.get(path, params=params, headers=headers)

    async def status(self, cp: str, evse: int, connector: int, status: str, at: datetime) -> None:
        await self.pool.execute(
            "INSERT INTO connector_status (time, charge_point_id, evse_id, connector_id, status, received_at) "
            "VALUES ($1, $2, $3, $4, $5, $1)", at, cp, evse, connector, status)

    async def location(self, location_id: str) -> dict[str, Any]:
        response = await self.get(f"{LIST}/{location_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = validate_envelope(response.json())
        validate_location(data)
        return data


def _evse(location: dict[str, Any], uid: str) -> dict[str, Any]:
    return next(e for e in location["evses"] if e["uid"] == uid)


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)

    await upsert_location(pool, LocationSpec("LOC-PUB", "Main Street Hub", address="1 Main Street", city="Springfield",
                                             postal_code="12345", latitude=39.78172, longitude=-89.650148,
                                             time_zone="America/Chicago", is_public=True))
    await upsert_location(pool, LocationSpec("LOC-PRIV", "Depot", address="9 Yard Road " * 6, city="Shelbyville",
                                             latitude=-33.8688, longitude=151.2093, time_zone="Australia/Sydney",
                                             opening_hours=HOURS))
    await upsert_location(pool, LocationSpec("LOC-NOGEO", "Nowhere", address="?", city="?", is_public=True))
    await add_charge_point(pool, ChargePointSpec("CP-A", location_id="LOC-PUB", password="x" * 16, evses=(
        EvseSpec(1, emi3_id="US*CSM*E1"), EvseSpec(2), EvseSpec(3))))
    await add_charge_point(pool, ChargePointSpec("CP-B", location_id="LOC-PRIV", password="x" * 16, evses=(
        EvseSpec(1, connectors=(
            ConnectorSpec(1, "IEC_62196_T1_COMBO", "CABLE", "DC", 920, 200, 150000.0),
            ConnectorSpec(2, "CHADEMO", "CABLE", "DC", 500, 125, 62500.0))),
        EvseSpec(2, connectors=(ConnectorSpec(1, "IEC_62196_T1", "CABLE", "AC_1_PHASE", 240, 32, 7680.0),
                                ConnectorSpec(2, "NOT_AN_OCPI_TYPE"))),
        EvseSpec(3, connectors=(ConnectorSpec(1, "SOMETHING_ELSE"),)))))
    await add_charge_point(pool, ChargePointSpec("CP-C", location_id="LOC-NOGEO", password="x" * 16))
    live = {"CP-A"}
    now = [1000.0]
    app = fastapi.FastAPI()

    async def live_ids() -> set[str]:
        return set(live)

    app.include_router(build_ocpi_router(pool=pool, live_ids=live_ids, token=TOKEN, clock=lambda: now[0]))
    env_ = Env(pool, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), live, now)
    t = datetime.now(UTC) - timedelta(minutes=10)
    await env_.status("CP-A", 1, 1, "Charging", t)
    await env_.status("CP-A", 2, 1, "Available", t)
    await env_.status("CP-B", 1, 1, "Faulted", t)
    await env_.status("CP-B", 1, 2, "Available", t)
    await env_.status("CP-B", 2, 1, "Preparing", t)
    try:
        yield env_
    finally:
        await env_.client.aclose()
        await pool.close()


@pytest.mark.integration
async def test_token_is_required(env: Env) -> None:
    for token in (None, "wrong", base64.b64encode(b"wrong").decode(), TOKEN + "x"):
        response = await env.get(LIST, token=token)
        assert response.status_code == 401, token
        validate_envelope(response.json(), 2000)
    assert (await env.client.get(LIST, headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 401
    for path in (f"{LIST}/LOC-PUB", f"{LIST}/LOC-PUB/CP-A*1", f"{LIST}/LOC-PUB/CP-A*1/1"):
        assert (await env.get(path, token=None)).status_code == 401
    raw = await env.get(LIST, token=TOKEN)
    encoded = await env.get(LIST, token=base64.b64encode(TOKEN.encode()).decode())
    assert raw.status_code == encoded.status_code == 200
    assert [loc["id"] for loc in validate_envelope(raw.json())] == ["LOC-PRIV", "LOC-PUB"]


@pytest.mark.integration
async def test_list_objects_are_valid_ocpi(env: Env) -> None:
    response = await env.get(LIST)
    locations = validate_envelope(response.json())
    for loc in locations:
        validate_location(loc)
    by_id = {loc["id"]: loc for loc in locations}
    assert set(by_id) == {"LOC-PUB", "LOC-PRIV"}                    # LOC-NOGEO has no coordinates
    pub, priv = by_id["LOC-PUB"], by_id["LOC-PRIV"]
    assert (pub["country_code"], pub["party_id"], pub["publish"], priv["publish"]) == ("US", "CSM", True, False)
    assert pub["coordinates"] == {"latitude": "39.781720", "longitude": "-89.650148"}
    assert priv["coordinates"] == {"latitude": "-33.868800", "longitude": "151.209300"}
    assert pub["opening_times"] == {"twentyfourseven": True}
    assert priv["opening_times"] == HOURS
    assert len(priv["address"]) == 45
    assert _evse(pub, "CP-A*1")["evse_id"] == "US*CSM*E1"
    assert "evse_id" not in _evse(pub, "CP-A*2")
    # Connectors with a non-OCPI standard are left out, and an EVSE left without connectors too.
    assert [e["uid"] for e in priv["evses"]] == ["CP-B*1", "CP-B*2"]
    assert [c["id"] for c in _evse(priv, "CP-B*2")["connectors"]] == ["1"]
    ccs = _evse(priv, "CP-B*1")["connectors"][0]
    assert (ccs["standard"], ccs["format"], ccs["power_type"], ccs["max_voltage"], ccs["max_amperage"],
            ccs["max_electric_power"]) == ("IEC_62196_T1_COMBO", "CABLE", "DC", 920, 200, 150000)


@pytest.mark.integration
async def test_paging_headers_and_link(env: Env) -> None:
    first = await env.get(LIST, limit=1)
    assert (first.headers["X-Total-Count"], first.headers["X-Limit"]) == ("2", "1")
    assert [loc["id"] for loc in first.json()["data"]] == ["LOC-PRIV"]
    link = re.fullmatch(r'<(.+)>; rel="next"', first.headers["Link"])
    assert link is not None
    url = httpx.URL(link.group(1))
    assert (url.params["offset"], url.params["limit"]) == ("1", "1")
    second = await env.client.get(url, headers={"Authorization": f"Token {TOKEN}"})
    assert [loc["id"] for loc in second.json()["data"]] == ["LOC-PUB"]
    assert "Link" not in second.headers
    assert second.headers["X-Total-Count"] == "2"
    past_end = await env.get(LIST, offset=5)
    assert past_end.json()["data"] == []
    assert past_end.headers["X-Total-Count"] == "2"
    assert (await env.get(LIST, limit=5000)).headers["X-Limit"] == "1000"    # server maximum
    assert "Link" not in (await env.get(LIST)).headers
    for bad in ({"offset": -1}, {"limit": 0}, {"limit": "ten"}, {"date_from": "yesterday"}):
        response = await env.get(LIST, **bad)
        assert response.status_code == 400, bad
        validate_envelope(response.json(), 2001)


@pytest.mark.integration
async def test_date_from_and_date_to_filter_on_last_updated(env: Env) -> None:
    old = datetime(2023, 1, 1, tzinfo=UTC)
    await env.pool.execute("DELETE FROM connector_status")                  # rows cannot move between chunks
    await env.status("CP-A", 1, 1, "Charging", old)
    await env.status("CP-B", 1, 1, "Faulted", old)
    for table in ("locations", "evses", "connectors"):
        await env.pool.execute(f"UPDATE {table} SET last_updated = $1", old)
    march = datetime(2024, 3, 1, 8, 30, 0, 250000, tzinfo=UTC)
    await env.pool.execute("UPDATE evses SET last_updated = $1 WHERE uid = 'CP-A*2'", march)

    async def ids(**params: Any) -> list[str]:
        response = await env.get(LIST, **params)
        assert response.status_code == 200, response.text
        return [loc["id"] for loc in response.json()["data"]]

    pub = await env.location("LOC-PUB")
    assert pub["last_updated"] == "2024-03-01T08:30:00.250Z"                  # EVSE change moves the Location
    assert await ids(date_from="2024-02-01T00:00:00Z") == ["LOC-PUB"]
    assert await ids(date_to="2024-02-01T00:00:00Z") == ["LOC-PRIV"]
    assert await ids(date_from=pub["last_updated"]) == ["LOC-PUB"]            # inclusive
    assert await ids(date_to=pub["last_updated"]) == ["LOC-PRIV"]             # exclusive
    assert await ids(date_from="2024-03-01T09:30:00.250+01:00") == ["LOC-PUB"]  # offsets are understood
    assert await ids(date_from="2022-01-01T00:00:00Z", date_to="2022-12-31T00:00:00Z") == []
    response = await env.get(LIST, date_from="2020-01-01T00:00:00Z", limit=1)
    assert response.headers["X-Total-Count"] == "2"
    assert "date_from=2020-01-01T00%3A00%3A00Z" in response.headers["Link"]    # filters kept in the next link


@pytest.mark.integration
async def test_status_mapping_end_to_end(env: Env) -> None:
    pub = await env.location("LOC-PUB")
    assert [(e["uid"], e["status"]) for e in pub["evses"]] == [
        ("CP-A*1", "CHARGING"), ("CP-A*2", "AVAILABLE"), ("CP-A*3", "UNKNOWN")]   # *3 never reported
    priv = await env.location("LOC-PRIV")
    assert {e["status"] for e in priv["evses"]} == {"UNKNOWN"}                 # CP-B is not connected
    env.live.add("CP-B")
    priv = await env.location("LOC-PRIV")
    assert [(e["uid"], e["status"]) for e in priv["evses"]] == [("CP-B*1", "OUTOFORDER"), ("CP-B*2", "CHARGING")]

    now = datetime.now(UTC)
    await env.status("CP-A", 3, 1, "Reserved", now - timedelta(minutes=2))
    await env.status("CP-A", 0, 0, "Faulted", now - timedelta(minutes=1))
    pub = await env.location("LOC-PUB")
    assert {e["status"] for e in pub["evses"]} == {"OUTOFORDER"}              # connector 0 applies to all
    await env.status("CP-A", 0, 0, "Unavailable", now)
    assert {e["status"] for e in (await env.location("LOC-PUB"))["evses"]} == {"INOPERATIVE"}
    await env.status("CP-A", 0, 0, "Available", now + timedelta(seconds=1))
    assert [e["status"] for e in (await env.location("LOC-PUB"))["evses"]] == ["CHARGING", "AVAILABLE", "RESERVED"]
    env.live.discard("CP-A")
    assert {e["status"] for e in (await env.location("LOC-PUB"))["evses"]} == {"UNKNOWN"}


@pytest.mark.integration
async def test_last_updated_propagates_from_status(env: Env) -> None:
    before = await env.location("LOC-PUB")
    newer = datetime.now(UTC) + timedelta(minutes=5)
    await env.status("CP-A", 2, 1, "Charging", newer)
    after = await env.location("LOC-PUB")
    expected = ocpi_datetime(newer)
    evse = _evse(after, "CP-A*2")
    assert evse["connectors"][0]["last_updated"] == expected
    assert evse["last_updated"] == expected
    assert after["last_updated"] == expected
    assert parse_ocpi_datetime(expected) > parse_ocpi_datetime(before["last_updated"])
    assert _evse(after, "CP-A*1")["last_updated"] == _evse(before, "CP-A*1")["last_updated"]  # siblings untouched
    assert evse["status"] == "CHARGING"
    # A charger-level status moves every EVSE of that charger.
    later = newer + timedelta(minutes=1)
    await env.status("CP-A", 0, 0, "Unavailable", later)
    after = await env.location("LOC-PUB")
    assert {e["last_updated"] for e in after["evses"]} == {after["last_updated"]} == {ocpi_datetime(later)}


@pytest.mark.integration
async def test_single_objects_and_unknown_ids(env: Env) -> None:
    evse_response = await env.get(f"{LIST}/LOC-PUB/CP-A*1")
    evse = validate_envelope(evse_response.json())
    validate_evse(evse)
    assert (evse["uid"], evse["status"]) == ("CP-A*1", "CHARGING")
    connector = validate_envelope((await env.get(f"{LIST}/LOC-PRIV/CP-B*1/2")).json())
    validate_connector(connector)
    assert connector["standard"] == "CHADEMO"
    for path in ("NOPE", "LOC-NOGEO", "LOC-PUB/CP-B*1", "LOC-PUB/NOPE", "LOC-PUB/CP-A*1/9",
                 "LOC-PRIV/CP-B*2/2", "LOC-PRIV/CP-B*3"):
        response = await env.get(f"{LIST}/{path}")
        assert response.status_code == 404, path
        body = response.json()
        validate_envelope(body, 2003)
        assert body["status_message"] == "Unknown Location"
        assert "data" not in body


@pytest.mark.integration
async def test_request_ids_are_echoed(env: Env) -> None:
    response = await env.client.get(LIST, headers={"Authorization": f"Token {TOKEN}", "X-Request-ID": "r-1",
                                                   "X-Correlation-ID": "c-1"})
    assert (response.headers["X-Request-ID"], response.headers["X-Correlation-ID"]) == ("r-1", "c-1")


@pytest.mark.integration
async def test_open_data_public_cached_and_cors(env: Env) -> None:
    response = await env.client.get(OPEN)                                    # no Authorization at all
    assert response.status_code == 200
    locations = validate_envelope(response.json())
    for loc in locations:
        validate_location(loc)
        assert loc["publish"] is True
    assert [loc["id"] for loc in locations] == ["LOC-PUB"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["X-Total-Count"] == "1"
    cache_control = response.headers["Cache-Control"]
    max_age = re.fullmatch(r"public, max-age=(\d+)", cache_control)
    assert max_age is not None
    assert int(max_age.group(1)) <= 30

    await upsert_location(env.pool, LocationSpec("LOC-NEW", "New site", address="2 Main Street", city="Springfield",
                                                 latitude=39.8, longitude=-89.6, is_public=True))
    env.now[0] += 10
    cached = await env.client.get(OPEN)
    assert [loc["id"] for loc in cached.json()["data"]] == ["LOC-PUB"]       # served from the cache
    assert cached.headers["Cache-Control"] == "public, max-age=20"          # never promises more than 30 s total
    other_query = await env.client.get(OPEN, params={"limit": 10})          # another key reads the database
    assert [loc["id"] for loc in other_query.json()["data"]] == ["LOC-NEW", "LOC-PUB"]
    env.now[0] += 20.5
    fresh = await env.client.get(OPEN)
    assert [loc["id"] for loc in fresh.json()["data"]] == ["LOC-NEW", "LOC-PUB"]
    assert fresh.headers["Cache-Control"] == "public, max-age=30"
    paged = await env.client.get(OPEN, params={"limit": 1})
    assert paged.headers["X-Total-Count"] == "2"
    assert paged.headers["Link"].startswith("<http://test/open-data/ocpi/locations?")
    bad = await env.client.get(OPEN, params={"offset": "-3"})
    assert bad.status_code == 400
    assert bad.headers["Access-Control-Allow-Origin"] == "*"
    validate_envelope(bad.json(), 2001)


@pytest.mark.integration
async def test_country_code_is_the_sites_country_unless_one_party_is_configured(env: Env) -> None:
    # OCPI 2.2.1 §8.3.1: country_code/party_id name the CPO party that owns the Location. Unconfigured,
    # that is the party of the site's own country (alpha-3 -> alpha-2); configured, one party for all.
    for loc, country, zone in (("LOC-IN", "IND", "Asia/Kolkata"), ("LOC-DE", "DEU", "Europe/Berlin"),
                               ("LOC-GB", "GBR", "Europe/London")):
        await upsert_location(env.pool, LocationSpec(loc, loc, country=country, latitude=10.0, longitude=20.0,
                                                     time_zone=zone))
        await add_charge_point(env.pool, ChargePointSpec(f"CP-{loc}", location_id=loc, password="x" * 16, evses=(
            EvseSpec(1, connectors=(ConnectorSpec(power_type="DC", rated_power_w=60000.0),)),)))
    await env.pool.execute("INSERT INTO locations (id, name, country, latitude, longitude) "
                           "VALUES ('LOC-ZZ', 'Nowhere land', 'ZZZ', 1, 1)")     # written past the registry
    listed = validate_envelope((await env.get(LIST)).json())
    codes = {loc["id"]: (loc["country"], loc["country_code"]) for loc in listed}
    assert codes == {"LOC-IN": ("IND", "IN"), "LOC-DE": ("DEU", "DE"), "LOC-GB": ("GBR", "GB"),
                     "LOC-PUB": ("USA", "US"), "LOC-PRIV": ("USA", "US")}          # LOC-ZZ: no such country
    india = await env.location("LOC-IN")
    [connector] = india["evses"][0]["connectors"]
    assert (connector["standard"], connector["format"], connector["power_type"]) == (
        "IEC_62196_T2_COMBO", "CABLE", "DC")                                          # not a Type 2 socket
    app = fastapi.FastAPI()
    async def no_live_ids() -> set[str]:
        return set()

    app.include_router(build_ocpi_router(pool=env.pool, live_ids=no_live_ids, token=TOKEN, country_code="NL"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        pinned = (await client.get(LIST, headers={"Authorization": f"Token {TOKEN}"})).json()["data"]
    assert {loc["country_code"] for loc in pinned} == {"NL"}
    assert {loc["id"]: loc["country"] for loc in pinned}["LOC-IN"] == "IND"
