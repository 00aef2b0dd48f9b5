"""Station utilization from a day built through the OCPP interface (the reference's example)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

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


async def test_utilization_example_through_ocpp_16(db_url: str) -> None:
    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)

    def at(hour: int, minute: int = 0) -> str:
        return iso(day + timedelta(hours=hour, minutes=minute))

    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await upsert_location(pool, LocationSpec(id="LOC-U", name="Depot", time_zone="UTC", latitude=1.0,
                                                     longitude=2.0))
            await add_charge_point(pool, ChargePointSpec(
                id="UT1", location_id="LOC-U", password=PASSWORD,
                evses=(EvseSpec(1, (ConnectorSpec(power_type="DC", rated_power_w=150_000),)),)))
            await central.add_token("U-TAG")
            n = 0

            async def call(ws: websockets.ClientConnection, action: str, payload: dict[str, object]) -> object:
                nonlocal n
                n += 1
                await ws.send(json.dumps([2, f"u{n}", action, payload]))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply[0] == 3, reply
                return reply[2]

            async with websockets.connect(f"{central.ws_base}/UT1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth("UT1", PASSWORD)) as ws:
                await call(ws, "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})

                async def status(when: str, state: str) -> None:
                    await call(ws, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": state,
                                                          "timestamp": when})

                await status(at(0), "Available")
                for begin, charge, finish, leave, start_wh, stop_wh in (
                        ((10, 0), (10, 5), (10, 50), (11, 0), 0, 30_000),
                        ((14, 0), (14, 0), (15, 0), (15, 30), 30_000, 75_000)):
                    await status(at(*begin), "Preparing")
                    started = await call(ws, "StartTransaction", {"connectorId": 1, "idTag": "U-TAG",
                                                                  "meterStart": start_wh, "timestamp": at(*begin)})
                    await status(at(*charge), "Charging")
                    await call(ws, "StopTransaction", {"transactionId": started["transactionId"],  # type: ignore[index]
                                                       "meterStop": stop_wh, "timestamp": at(*finish)})
                    await status(at(*finish), "Finishing")
                    await status(at(*leave), "Available")
            async with central.api() as api:
                reply = await api.get("/api/v1/reporting/stations/LOC-U/utilization",
                                      params={"from": at(0), "to": iso(day + timedelta(days=1))})
                body = reply.json()
    finally:
        await pool.close()
    assert reply.status_code == 200, body
    assert body["u_occupied_pct"] == 10.42       # 150 / 1440
    assert body["u_charging_pct"] == 7.29        # 105 / 1440
    assert body["u_idle_pct"] == 3.13
    assert body["energy_kwh"] == 75.0
    assert body["capacity_factor_pct"] == 2.08   # 75 / (150 × 24)
    assert body["sessions_per_port_day"] == 2
    assert body["formula_version"]
