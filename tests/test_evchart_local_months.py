"""EV-ChART modules 3 and 4 in station-local months, and stable outage ids (issue 11 item 7).

A Los Angeles port (history through OCPP, charger-side timestamps):

* A: Faulted 2025-10-01 05:00–09:00Z = 30 Sep 22:00 – 1 Oct 02:00 PDT: crosses the local Q3/Q4 edge.
* B: Faulted 2025-12-01 05:00–07:00Z = 30 Nov 21:00–23:00 PST: local November (UTC December).
* C: Faulted 2025-11-15 09:00–11:00Z while the whole charger (connector 0) is Unavailable
  10:00–12:00Z: the charger-level outage counts from 11:00 (the port's own fault covers the rest).

Module 3's month rows are the NEVI uptime API's figures for the same report month; module 4
and ``/outages`` give each outage the same id (its start in the data) whatever the window.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from csms.store.registry import (
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    add_charge_point,
    upsert_location,
)
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration


def z(text: str) -> str:
    return f"{text}:00Z"


def rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


async def test_module_3_and_4_use_station_local_months_and_stable_outage_ids(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await upsert_location(pool, LocationSpec(id="LOC-LA", name="LA", time_zone="America/Los_Angeles",
                                                     latitude=34.0, longitude=-118.2,
                                                     operational_since=datetime(2024, 1, 1, tzinfo=UTC)))
            await add_charge_point(pool, ChargePointSpec(
                id="LAM", location_id="LOC-LA", password=PASSWORD,
                evses=(EvseSpec(1, (ConnectorSpec(power_type="DC", rated_power_w=150_000),)),)))
            n = 0
            async with websockets.connect(f"{central.ws_base}/LAM", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth("LAM", PASSWORD)) as ws:
                async def call(action: str, payload: dict[str, Any]) -> None:
                    nonlocal n
                    n += 1
                    await ws.send(json.dumps([2, f"m{n}", action, payload]))
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert reply[0] == 3, reply

                await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
                for connector, when, state, error in (
                        (0, "2024-09-01T00:00", "Available", "NoError"),
                        (1, "2024-09-01T00:00", "Available", "NoError"),
                        (1, "2025-10-01T05:00", "Faulted", "GroundFailure"),          # A
                        (1, "2025-10-01T09:00", "Available", "NoError"),
                        (1, "2025-11-15T09:00", "Faulted", "HighTemperature"),        # C
                        (0, "2025-11-15T10:00", "Unavailable", "NoError"),
                        (1, "2025-11-15T11:00", "Available", "NoError"),
                        (0, "2025-11-15T12:00", "Available", "NoError"),
                        (1, "2025-12-01T05:00", "Faulted", "PowerSwitchFailure"),     # B
                        (1, "2025-12-01T07:00", "Available", "NoError")):
                    await call("StatusNotification", {"connectorId": connector, "status": state, "errorCode": error,
                                                      "timestamp": z(when)})
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while await pool.fetchval("SELECT count(*) FROM connector_status WHERE charge_point_id = 'LAM'") < 10:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            grace = {"offline_grace_s": 86400}   # the charger's real disconnect (now) is not part of this history
            async with central.api() as api:
                base = "/api/v1/reporting/ports/LAM/1"
                for starts, ends, reason, notes in (("2025-10-01T05:00", "2025-10-01T06:00", "vandalism", "cable cut"),
                                                    ("2025-12-01T05:00", "2025-12-01T07:00", "utility_interruption",
                                                     "utility ticket 42")):
                    added = await api.post(f"{base}/exclusions", json={
                        "starts_at": z(starts), "ends_at": z(ends), "reason": reason, "notes": notes,
                        "claimed_by": "ops@example"})
                    assert added.status_code == 201, added.text
                export = "/api/v1/reporting/exports/ev-chart"
                module3 = rows((await api.get(f"{export}/module-3.csv", params={"year": 2025, "quarter": 4,
                                                                                **grace})).content)
                q4 = rows((await api.get(f"{export}/module-4.csv", params={
                    "year": 2025, "quarter": 4, "with_exclusions": "true", **grace})).content)
                q3 = rows((await api.get(f"{export}/module-4.csv", params={
                    "year": 2025, "quarter": 3, "with_exclusions": "true", **grace})).content)
                nevi = {m: (await api.get(f"{base}/uptime", params={"method": "nevi", "report_month": m, **grace})
                            ).json() for m in ("2025-10", "2025-11", "2025-12")}
                windows = {
                    "month": {"month": "2025-11"},
                    "wide": {"from": z("2025-09-01T00:00"), "to": z("2025-12-15T00:00")},
                    "inside_A": {"from": z("2025-10-01T08:00"), "to": z("2025-10-02T00:00")},
                    "inside_fragment": {"from": z("2025-11-15T11:30"), "to": z("2025-11-15T12:30")},
                }
                outages = {name: (await api.get(f"{base}/outages", params={**w, **grace})).json()["outages"]
                           for name, w in windows.items()}
    finally:
        await pool.close()

    # Module 3: station-local month windows, the same figures as the uptime API.
    assert [(r["uptime_reporting_start"], r["uptime_reporting_end"]) for r in module3] == [
        ("2024-11-01T07:00:00Z", "2025-11-01T07:00:00Z"),
        ("2024-12-01T08:00:00Z", "2025-12-01T08:00:00Z"),
        ("2025-01-01T08:00:00Z", "2026-01-01T08:00:00Z")]
    assert [r["total_outage"] for r in module3] == ["240.00", "540.00", "540.00"]   # B is in local November
    for row, month in zip(module3, ("2025-10", "2025-11", "2025-12"), strict=True):
        body = nevi[month]
        assert body["uptime_pct"] is not None, body
        assert row["uptime"] == f"{body['uptime_pct']:.2f}"
        assert row["total_outage"] == f"{body['t_outage_min']:.2f}"
        assert row["total_outage_excl"] == f"{body['t_excluded_min']:.2f}"
    assert nevi["2025-11"]["uptime_pct"] == round((525600 - (540 - 180)) / 525600 * 100, 2)

    # Module 4: an outage crossing the local quarter edge is in both quarters with one id.
    def by_id(table: list[dict[str, str]]) -> dict[str, dict[str, str]]:
        return {r["outage_id"]: r for r in table}

    q3_rows, q4_rows = by_id(q3), by_id(q4)
    assert list(q3_rows) == ["2025-10-01T05:00:00Z"]
    assert q3_rows["2025-10-01T05:00:00Z"]["outage_duration"] == "120.00"       # 22:00–24:00 PDT
    assert sorted(q4_rows) == ["2025-10-01T05:00:00Z", "2025-11-15T09:00:00Z", "2025-11-15T11:00:00Z",
                               "2025-12-01T05:00:00Z"]
    assert [q4_rows[k]["outage_duration"] for k in sorted(q4_rows)] == ["120.00", "120.00", "60.00", "120.00"]
    # Exclusion columns carry the recorded notes (and the excluded part when partial).
    a3 = q3_rows["2025-10-01T05:00:00Z"]
    assert (a3["excluded_outage"], a3["excluded_outage_reason"]) == ("true", "4")
    assert a3["excluded_outage_notes"] == "60.00 of 120.00 min excluded; cable cut"
    b4 = q4_rows["2025-12-01T05:00:00Z"]
    assert (b4["excluded_outage"], b4["excluded_outage_reason"], b4["excluded_outage_notes"]) == (
        "true", "1", "utility ticket 42")
    assert q4_rows["2025-10-01T05:00:00Z"]["excluded_outage"] == "false"

    # /outages: one id per outage whatever the window's cut, equal to module 4's.
    ids = {name: [o["outage_id"] for o in found] for name, found in outages.items()}
    assert ids["wide"] == sorted(q4_rows)
    assert ids["month"] == ["2025-11-15T09:00:00Z", "2025-11-15T11:00:00Z", "2025-12-01T05:00:00Z"]
    assert ids["inside_A"] == ["2025-10-01T05:00:00Z"]
    assert outages["inside_A"][0]["start"] == "2025-10-01T08:00:00Z"
    assert outages["inside_A"][0]["duration_min"] == 60
    assert ids["inside_fragment"] == ["2025-11-15T11:00:00Z"]                  # not 10:00, nor 11:30
    assert outages["inside_fragment"][0]["scope"] == "charge_point"
    assert outages["inside_fragment"][0]["duration_min"] == 30
    wide = {o["outage_id"]: o for o in outages["wide"]}
    assert wide["2025-11-15T09:00:00Z"]["cause"] == "Faulted HighTemperature"
    assert wide["2025-11-15T11:00:00Z"]["cause"] == "Unavailable NoError"


async def test_offline_outage_has_the_same_id_in_any_window(db_url: str, db: asyncpg.Connection) -> None:
    """An offline outage in force at a window's start keeps its start (the disconnect)."""
    async with running_central(db_url) as central:
        await central.register("OFF1", evses=1)
        async with websockets.connect(f"{central.ws_base}/OFF1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("OFF1", PASSWORD)) as ws:
            await ws.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (gone := await db.fetchval("SELECT max(time) FROM connection_events WHERE charge_point_id = 'OFF1' "
                                         "AND event = 'disconnected'")) is None:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        async with central.api() as api:
            found = []
            for begin in (gone - timedelta(minutes=5), gone + timedelta(milliseconds=5)):
                body = (await api.get("/api/v1/reporting/ports/OFF1/1/outages", params={
                    "from": iso(begin), "to": iso(datetime.now(UTC) + timedelta(hours=1))})).json()
                found.append([(o["outage_id"], o["detection"], o["continues"]) for o in body["outages"]])
    expected = gone.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + (f".{gone.microsecond:06d}Z" if gone.microsecond
                                                                     else "Z")
    assert found == [[(expected, "offline", True)]] * 2
