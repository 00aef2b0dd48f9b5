"""What makes the reports fast must not change a figure (issue 11 item 12), and EV-ChART module 2 uses
the station-local quarter (item 7). History through the real OCPP interface, figures through the API.

* Module 2: a session just after local midnight of a quarter's first day at an Indian station (the
  previous UTC day) belongs to that quarter; one just after local midnight of the next quarter does not.
* The bulk session exports read each finished session's peak power and SoC from the roll-up
  (``session_summary``): the same bytes as computed from the samples, also when a sample arrives
  after the roll-up (then computed from the samples until the next roll-up).
* Uptime reads the row after each Faulted/Unavailable row from the roll-up (``status_successor``):
  the same outages, also when a status arrives between the two after the roll-up.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
import websockets

from csms.reporting.calendar import report_bounds, walked_bounds
from csms.store.registry import ChargePointSpec, EvseSpec, LocationSpec, add_charge_point, upsert_location
from ingest.rollup import refresh
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth, iso

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@asynccontextmanager
async def charger16(central: RunningCentral, cp_id: str) -> AsyncIterator[Call]:
    n = 0
    async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, PASSWORD)) as ws:
        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            nonlocal n
            n += 1
            await ws.send(json.dumps([2, f"r{n}", action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert reply[0] == 3, (action, reply)
            return dict(reply[2])

        await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        yield call


async def session(call: Call, start: datetime, minutes: float, *, meter: int = 0, wh: int = 5000,
                  samples: list[dict[str, Any]] | None = None) -> int:
    tx = int((await call("StartTransaction", {"connectorId": 1, "idTag": "SPEED", "meterStart": meter,
                                              "timestamp": iso(start)}))["transactionId"])
    if samples:
        await call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": samples})
    await call("StopTransaction", {"transactionId": tx, "meterStop": meter + wh,
                                   "timestamp": iso(start + timedelta(minutes=minutes))})
    return tx


def rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


async def module_2(api: httpx.AsyncClient, year: int, quarter: int) -> list[tuple[str, str]]:
    reply = await api.get("/api/v1/reporting/exports/ev-chart/module-2.csv", params={"year": year, "quarter": quarter})
    assert reply.status_code == 200, reply.text
    return [(r["charger_id"], r["session_start"]) for r in rows(reply.content)]


@pytest.mark.integration
async def test_module_2_uses_the_station_local_quarter(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        await upsert_location(pool, LocationSpec(id="LOC-PUNE", name="Pune", country="IND", time_zone="Asia/Kolkata"))
        await upsert_location(pool, LocationSpec(id="LOC-UTC", name="London", country="GBR", time_zone="UTC"))
        for cp, loc in (("MQIN", "LOC-PUNE"), ("MQUK", "LOC-UTC")):
            await add_charge_point(pool, ChargePointSpec(id=cp, location_id=loc, password=PASSWORD,
                                                         evses=(EvseSpec(1),)))
        async with running_central(db_url) as central:
            await central.add_token("SPEED")
            async with charger16(central, "MQIN") as call:
                # India is UTC+05:30: 18:40Z on 31 March is 00:10 on 1 April at the station.
                for start in ("2026-03-31T18:20:00Z", "2026-03-31T18:40:00Z", "2026-06-30T17:30:00Z",
                              "2026-06-30T18:40:00Z"):
                    await session(call, datetime.fromisoformat(start), 5)
            async with charger16(central, "MQUK") as call:
                for start in ("2026-03-31T23:50:00Z", "2026-04-01T00:10:00Z"):
                    await session(call, datetime.fromisoformat(start), 5)
            async with central.api() as api:
                q1, q2, q3 = [await module_2(api, 2026, q) for q in (1, 2, 3)]
    finally:
        await pool.close()
    assert q2 == [("MQIN", "2026-03-31T18:40:00Z"), ("MQUK", "2026-04-01T00:10:00Z"), ("MQIN", "2026-06-30T17:30:00Z")]
    assert q1 == [("MQIN", "2026-03-31T18:20:00Z"), ("MQUK", "2026-03-31T23:50:00Z")]
    assert q3 == [("MQIN", "2026-06-30T18:40:00Z")]


DAY = datetime(2026, 5, 12, tzinfo=UTC)


def reading(at: datetime, *, wh: int | None = None, watts: int | None = None, soc: int | None = None,
            ) -> dict[str, Any]:
    values = []
    if wh is not None:
        values.append({"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
    if watts is not None:
        values.append({"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"})
    if soc is not None:
        values.append({"value": str(soc), "measurand": "SoC", "unit": "Percent"})
    return {"timestamp": iso(at), "sampledValue": values}


async def exports(api: httpx.AsyncClient) -> list[bytes]:
    window = {"from": iso(DAY), "to": iso(DAY + timedelta(days=1))}
    out = []
    for path, params in (("/api/v1/reporting/exports/sessions.csv", window),
                         ("/api/v1/reporting/exports/sessions.csv", {**window, "schema": "evcu_session"}),
                         ("/api/v1/reporting/exports/ev-chart/module-2.csv", {"year": 2026, "quarter": 2})):
        reply = await api.get(path, params=params)
        assert reply.status_code == 200, reply.text
        out.append(reply.content)
    return out


@pytest.mark.integration
async def test_session_figures_from_the_roll_up_match_the_samples(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    try:
        await upsert_location(pool, LocationSpec(id="LOC-S", name="S", time_zone="UTC"))
        await add_charge_point(pool, ChargePointSpec(id="SUM16", location_id="LOC-S", password=PASSWORD,
                                                     evses=(EvseSpec(1),)))
        async with running_central(db_url) as central:
            await central.add_token("SPEED")
            async with charger16(central, "SUM16") as call:
                a = DAY + timedelta(hours=8)
                await session(call, a, 60, wh=20_000, samples=[
                    reading(a + timedelta(minutes=10), wh=3000, watts=18_000, soc=20),
                    reading(a + timedelta(minutes=40), wh=15_000, watts=22_000, soc=64),
                    reading(a + timedelta(minutes=50), wh=19_000, watts=9_000, soc=71)])
                b = DAY + timedelta(hours=12)
                await session(call, b, 30, meter=20_000, wh=300,
                              samples=[reading(b + timedelta(minutes=5), watts=3_500)])
                async with central.api() as api:
                    raw = await exports(api)
                    await refresh(pool)
                    assert await pool.fetchval("SELECT count(*) FROM session_summary") == 2
                    assert await exports(api) == raw      # read from the roll-up: the same bytes
                    # A late power sample of the first session, alone in its message, after the roll-up.
                    await call("MeterValues", {"connectorId": 1, "transactionId": int(rows(raw[0])[0]["session_id"]),
                                               "meterValue": [reading(a + timedelta(minutes=30), watts=40_000)]})
                    late = await exports(api)
                    await refresh(pool)
                    rolled = await exports(api)
                    peak = await pool.fetchval("SELECT max(peak_power_w) FROM session_summary")
    finally:
        await pool.close()
    generic, evcu, m2 = (rows(body) for body in raw)
    assert [(r["peak_kw"], r["energy_kwh"]) for r in generic] == [("22.000", "20.000"), ("3.500", "0.300")]
    assert [(r["start_soc"], r["end_soc"]) for r in evcu] == [("0.200", "0.710"), ("", "")]
    assert [r["power_kw"] for r in m2] == ["22.00", "3.50"]
    # The late sample counts at once (computed from the samples), and after the next roll-up from it.
    assert [r["peak_kw"] for r in rows(late[0])] == ["40.000", "3.500"]
    assert [r["power_kw"] for r in rows(late[2])] == ["40.00", "3.50"]
    assert rolled == late
    assert peak == 40_000


async def outages(api: httpx.AsyncClient, cp: str) -> list[dict[str, Any]]:
    reply = await api.get(f"/api/v1/reporting/ports/{cp}/1/outages",
                          params={"from": iso(DAY), "to": iso(DAY + timedelta(days=1))})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["outages"])


@pytest.mark.integration
async def test_uptime_from_the_roll_ups_status_pairs(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    try:
        await upsert_location(pool, LocationSpec(id="LOC-U", name="U", time_zone="UTC"))
        await add_charge_point(pool, ChargePointSpec(id="UP16", location_id="LOC-U", password=PASSWORD,
                                                     evses=(EvseSpec(1),)))
        async with running_central(db_url) as central, charger16(central, "UP16") as call:
            async def status(hours: float, state: str, error: str = "NoError", connector: int = 1) -> None:
                await call("StatusNotification", {"connectorId": connector, "errorCode": error, "status": state,
                                                  "timestamp": iso(DAY + timedelta(hours=hours))})

            for hours, state, error in ((0, "Available", "NoError"), (2, "Faulted", "GroundFailure"),
                                        (3, "Available", "NoError"), (5, "Faulted", "OverVoltage"),
                                        (5.5, "Unavailable", "NoError"), (6, "Available", "NoError")):
                await status(hours, state, error)
            await status(8, "Unavailable", connector=0)     # the whole charge point, 08:00–09:00
            await status(9, "Available", connector=0)
            async with central.api() as api:
                raw = await outages(api, "UP16")
                await refresh(pool)
                assert await pool.fetchval("SELECT count(*) FROM status_successor") == 4
                assert await outages(api, "UP16") == raw
                await status(2.5, "Available")               # stored late, inside the first outage
                late = await outages(api, "UP16")
                await refresh(pool)
                rolled = await outages(api, "UP16")
    finally:
        await pool.close()
    assert [(o["outage_id"], o["duration_min"], o["scope"]) for o in raw] == [
        ("2026-05-12T02:00:00Z", 60.0, "port"), ("2026-05-12T05:00:00Z", 60.0, "port"),
        ("2026-05-12T08:00:00Z", 60.0, "charge_point")]
    assert [(o["outage_id"], o["duration_min"]) for o in late] == [
        ("2026-05-12T02:00:00Z", 30.0), ("2026-05-12T05:00:00Z", 60.0), ("2026-05-12T08:00:00Z", 60.0)]
    assert rolled == late


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns",
                                  "Pacific/Chatham", "Europe/London", "Asia/Kathmandu"])
def test_hour_bounds_skip_ahead_finds_every_local_hour(zone: str) -> None:
    """Hour buckets jump an hour at a time between offset changes: the same bounds as walking every
    quarter hour, also on DST changes of 30 minutes (Lord Howe) and in :30/:45 zones."""
    for start in (datetime(2025, 3, 29, 22, 7, tzinfo=UTC), datetime(2026, 9, 30, 13, 30, tzinfo=UTC)):
        window = (start, start + timedelta(days=200))
        assert report_bounds(window, "hour", ZoneInfo(zone)) == walked_bounds(window, "hour", ZoneInfo(zone))
