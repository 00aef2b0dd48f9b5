"""Utilization per port/station/network in local-time buckets, the hour-of-week profile and
fleet uptime, on a history built through the OCPP interface (charger-side timestamps).

Every figure is checked by hand, and every report is taken twice: before the 15-minute
roll-up has seen the data (computed from raw rows) and after it (read from the roll-up).
Both must be identical, also after late data arrives behind the roll-up's watermark.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
from ingest.rollup import refresh
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth

pytestmark = pytest.mark.integration

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def z(text: str) -> str:
    """A UTC time of the test history, e.g. z('11-02 07:30') → 2025-11-02T07:30:00Z."""
    return f"2025-{text[:5]}T{text[6:]}:00Z"


@asynccontextmanager
async def charger(central: RunningCentral, cp_id: str, version: str) -> AsyncIterator[Call]:
    count = 0
    async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=[version],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, PASSWORD)) as ws:
        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            nonlocal count
            count += 1
            await ws.send(json.dumps([2, f"m{count}", action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0] == 3, reply
            return reply[2]  # type: ignore[no-any-return]

        if version == "ocpp1.6":
            await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        else:
            await call("BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
        yield call


async def status16(call: Call, when: str, state: str, error: str = "NoError") -> None:
    await call("StatusNotification", {"connectorId": 1, "errorCode": error, "status": state, "timestamp": z(when)})


async def status201(call: Call, when: str, state: str) -> None:
    await call("StatusNotification", {"timestamp": z(when), "connectorStatus": state, "evseId": 1, "connectorId": 1})


async def register(pool: asyncpg.Pool) -> None:
    await upsert_location(pool, LocationSpec(id="LOC-LA", name="LA", time_zone="America/Los_Angeles",
                                             latitude=34.0, longitude=-118.2))
    # Open 09:00–21:00 India time every day.
    hours = {"twentyfourseven": False, "regular_hours": [
        {"weekday": d, "period_begin": "09:00", "period_end": "21:00"} for d in range(1, 8)]}
    await upsert_location(pool, LocationSpec(id="LOC-IN", name="Pune", country="IND", time_zone="Asia/Kolkata",
                                             latitude=18.5, longitude=73.8, opening_hours=hours))
    for cp, loc, kw in (("LA16", "LOC-LA", 50), ("LA201", "LOC-LA", 50), ("IN16", "LOC-IN", 7)):
        await add_charge_point(pool, ChargePointSpec(
            id=cp, location_id=loc, password=PASSWORD,
            evses=(EvseSpec(1, (ConnectorSpec(power_type="DC", rated_power_w=kw * 1000),)),)))


async def build_history(central: RunningCentral) -> None:
    async with charger(central, "LA16", "ocpp1.6") as call:
        # Fall-back day in Los Angeles (2025-11-02 has 25 hours): 00:30 PDT → 01:45 PST.
        await status16(call, "11-01 07:00", "Available")
        await status16(call, "11-02 07:30", "Preparing")
        started = await call("StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": 0,
                                                  "timestamp": z("11-02 07:30")})
        await status16(call, "11-02 07:45", "Charging")
        await call("StopTransaction", {"transactionId": started["transactionId"], "meterStop": 50_000,
                                       "timestamp": z("11-02 09:30")})
        await status16(call, "11-02 09:30", "Finishing")
        await status16(call, "11-02 09:45", "Available")
        await status16(call, "11-03 10:00", "Faulted", "GroundFailure")   # a one-hour outage
        await status16(call, "11-03 11:00", "Available")
    async with charger(central, "LA201", "ocpp2.0.1") as call:
        await status201(call, "11-01 07:00", "Available")
        await status201(call, "11-02 08:00", "Occupied")
        tx = {"transactionId": "T-201"}
        for seq, (kind, when, state) in enumerate((("Started", "08:00", "EVConnected"),
                                                   ("Updated", "08:10", "Charging"),
                                                   ("Updated", "08:50", "SuspendedEV"),
                                                   ("Ended", "09:10", "EVConnected"))):
            payload: dict[str, Any] = {"eventType": kind, "timestamp": z(f"11-02 {when}"), "seqNo": seq,
                                       "triggerReason": "ChargingStateChanged",
                                       "transactionInfo": {**tx, "chargingState": state}}
            if kind == "Started":
                payload["evse"] = {"id": 1, "connectorId": 1}
                payload["idToken"] = {"idToken": "TAG", "type": "ISO14443"}
            await call("TransactionEvent", payload)
        await status201(call, "11-02 09:10", "Available")
    async with charger(central, "IN16", "ocpp1.6") as call:
        await status16(call, "11-01 00:00", "Available")
        await status16(call, "11-02 04:30", "Charging")     # 10:00–12:00 IST, inside opening hours
        await status16(call, "11-02 06:30", "Available")


async def reports(central: RunningCentral) -> dict[str, Any]:
    day = {"from": "2025-11-01T00:00:00-07:00", "to": "2025-11-04T00:00:00-08:00"}
    utc_day = {"from": z("11-02 00:00"), "to": z("11-03 00:00")}
    async with central.api() as api:
        out = {}
        for name, path, params in (
                ("station_days", "/api/v1/reporting/stations/LOC-LA/utilization", {**day, "bucket": "day"}),
                ("station_hours", "/api/v1/reporting/stations/LOC-LA/utilization",
                 {"from": "2025-11-02T00:00:00-07:00", "to": "2025-11-03T00:00:00-08:00", "bucket": "hour"}),
                ("port", "/api/v1/reporting/ports/LA16/1/utilization", {**day, "bucket": "week"}),
                ("network_calendar", "/api/v1/reporting/network/utilization", {**utc_day, "basis": "calendar"}),
                ("network_hours", "/api/v1/reporting/network/utilization",
                 {**utc_day, "bucket": "hour", "tz": "UTC"}),
                ("network_local_days", "/api/v1/reporting/network/utilization",
                 {"from": z("11-01 00:00"), "to": z("11-04 00:00"), "bucket": "day", "basis": "calendar"}),
                ("profile", "/api/v1/reporting/stations/LOC-IN/utilization/profile", utc_day),
                ("uptime_station", "/api/v1/reporting/uptime",
                 {"method": "generic", "from": z("11-02 00:00"), "to": z("11-04 00:00")}),
                ("uptime_network", "/api/v1/reporting/uptime",
                 {"method": "generic", "from": z("11-02 00:00"), "to": z("11-04 00:00"), "group_by": "network"}),
                ("uptime_port", "/api/v1/reporting/uptime",
                 {"method": "generic", "from": z("11-02 00:00"), "to": z("11-04 00:00"), "group_by": "port",
                  "location_id": "LOC-LA"})):
            reply = await api.get(path, params=params)
            assert reply.status_code == 200, (name, reply.text)
            body = reply.json()
            body.pop("generated_at")
            out[name] = body
        return out


async def test_fleet_reports_by_hand_and_identical_from_raw_rows_and_rollup(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await register(pool)
            await build_history(central)
            raw = await reports(central)
            assert (await refresh(pool)).ran
            assert await pool.fetchval("SELECT count(*) FROM port_state_dirty") == 0
            assert await pool.fetchval("SELECT count(*) FROM port_state_15m") > 0
            rolled = await reports(central)
            assert rolled == raw

            # Late data behind the watermark: a session on the Indian port, stored after the roll-up.
            async with charger(central, "IN16", "ocpp1.6") as call:
                await status16(call, "11-02 10:00", "Preparing")   # 15:30–16:30 IST
                await status16(call, "11-02 11:00", "Available")
            late = await reports(central)
            assert (await refresh(pool)).ran
            assert await reports(central) == late
    finally:
        await pool.close()
    check_by_hand(raw, late)


def check_by_hand(raw: dict[str, Any], late: dict[str, Any]) -> None:
    days = raw["station_days"]["buckets"]
    assert [b["bucket_start_local"][:10] for b in days] == ["2025-11-01", "2025-11-02", "2025-11-03"]
    assert [b["avail_min"] for b in days] == [2880, 3000, 2880]            # the 25-hour day
    nov2 = days[1]
    assert (nov2["occupied_min"], nov2["charging_min"], nov2["idle_min"]) == (205, 145, 60)  # 135 + 70, 105 + 40
    assert (nov2["u_occupied_pct"], nov2["u_charging_pct"], nov2["u_idle_pct"]) == (6.83, 4.83, 2.0)
    assert nov2["sessions"] == 2
    assert nov2["peak_concurrency"] == 2
    assert (nov2["median_post_charge_idle_min"], nov2["p90_post_charge_idle_min"]) == (15, 20)
    assert days[0]["occupied_min"] == 0
    assert days[0]["peak_concurrency"] == 0
    assert raw["station_days"]["occupied_min"] == 205                        # totals over the window
    assert len(raw["station_hours"]["buckets"]) == 25
    port = raw["port"]
    assert (port["energy_kwh"], port["sessions"], port["success_rate_pct"]) == (50, 1, 100)
    assert port["capacity_factor_pct"] == round(50 / (50 * 73) * 100, 2)     # 3 local days are 73 hours
    # Network: recomputed from minutes, not averaged from the stations' percentages.
    net = raw["network_calendar"]
    assert (net["ports"], net["avail_min"], net["occupied_min"]) == (3, 4320, 325)
    assert net["u_occupied_pct"] == 7.52                                      # 325 / 4320; stations: 7.12
    assert 8.33
    assert net["peak_concurrency"] is None
    hours = raw["network_hours"]                                             # India open 09:00–21:00 IST only
    assert (hours["avail_min"], hours["occupied_min"], hours["u_occupied_pct"]) == (2880 + 720, 325, 9.03)
    assert sum(b["occupied_min"] for b in hours["buckets"]) == 325
    # Station-local days: "11-02" is 2 November at each station (25 hours in Los Angeles).
    local = {b["bucket_start_local"]: b for b in raw["network_local_days"]["buckets"]}
    assert local["2025-11-02"]["occupied_min"] == 325
    assert local["2025-11-02"]["ports"] == 3
    assert local["2025-11-02"]["avail_min"] == 2 * 1500 + 1440
    assert raw["network_local_days"]["occupied_min"] == 325
    slots = {(s["weekday"], s["hour"]): s for s in raw["profile"]["slots"]}
    assert slots[(7, 10)]["u_occupied_pct"] == 100
    assert slots[(7, 11)]["u_charging_pct"] == 100  # Sunday IST
    assert slots[(7, 8)]["avail_min"] == 0
    assert slots[(7, 12)]["u_occupied_pct"] == 0
    # Uptime: one 60-minute fault on LA16 in 2 × 1,440 minutes.
    station = {g["group"]: g for g in raw["uptime_station"]["groups"]}
    assert station["LOC-LA"]["uptime_pct"] == round((5760 - 60) / 5760 * 100, 2)
    assert station["LOC-LA"]["t_outage_min"] == 60
    assert station["LOC-IN"]["uptime_pct"] == 100
    [network] = raw["uptime_network"]["groups"]
    assert (network["ports"], network["uptime_pct"]) == (3, round((8640 - 60) / 8640 * 100, 2))
    assert {g["group"]: g["uptime_pct"] for g in raw["uptime_port"]["groups"]} == {
        "LA16/1": round((2880 - 60) / 2880 * 100, 2), "LA201/1": 100}
    # The late session (15:30–16:30 IST) is counted at once, before any roll-up.
    assert late["network_hours"]["occupied_min"] == 325 + 60
    assert late["network_calendar"]["occupied_min"] == 325 + 60
