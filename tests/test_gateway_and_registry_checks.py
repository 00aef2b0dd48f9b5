"""Gateway and registry details: a transaction's EVSE recalled after a reconnect, deflate
without context takeover, real time zones only."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration


def _energy(wh: float, at: datetime) -> list[dict[str, Any]]:
    return [{"timestamp": iso(at), "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register",
                                                       "unitOfMeasure": {"unit": "Wh"}}]}]


async def test_events_without_evse_after_a_reconnect_keep_their_evse(db_url: str) -> None:
    """OCPP 2.0.1: TransactionEvents after a reconnect may omit ``evse`` (required only in the
    first event of a transaction, E01.FR.16). The central system recalls the transaction's EVSE
    from the database, so the samples land on the right EVSE and no register check trips."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    async with running_central(db_url) as central:
        await central.register("RC1", evses=2)
        count = 0

        async def session(frames: list[tuple[str, dict[str, Any]]]) -> None:
            nonlocal count
            async with websockets.connect(f"{central.ws_base}/RC1", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                          additional_headers=basic_auth("RC1", PASSWORD)) as ws:
                for action, payload in frames:
                    count += 1
                    await ws.send(json.dumps([2, f"r{count}", action, payload]))
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert reply[0] == 3, reply

        boot = ("BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
        tx = {"transactionId": "RC-TX"}
        await session([boot, ("TransactionEvent", {
            "eventType": "Started", "timestamp": iso(start), "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {**tx, "chargingState": "Charging"}, "evse": {"id": 2, "connectorId": 1},
            "meterValue": _energy(1000, start)})])
        later = start + timedelta(minutes=5)
        await session([("TransactionEvent", {   # a new connection; no evse this time
            "eventType": "Updated", "timestamp": iso(later), "triggerReason": "MeterValuePeriodic", "seqNo": 1,
            "transactionInfo": tx, "meterValue": _energy(2000, later)})])
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT evse_id, value, quality_flags FROM meter_samples "
                                "WHERE transaction_uid = 'RC-TX' ORDER BY time")
    finally:
        await conn.close()
    assert [(r["evse_id"], r["value"]) for r in rows] == [(2, 1000.0), (2, 2000.0)]
    assert all(r["quality_flags"] == 0 for r in rows)


async def test_deflate_is_negotiated_without_context_takeover(db_url: str) -> None:
    """Part 4 §3.3: permessage-deflate is supported; without context takeover an idle
    connection keeps no zlib state (memory per charger, docs/benchmarks.md)."""
    from websockets.extensions.permessage_deflate import PerMessageDeflate

    async with running_central(db_url) as central:
        await central.register("DF1", evses=1)
        async with websockets.connect(f"{central.ws_base}/DF1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("DF1", PASSWORD)) as ws:
            [ext] = ws.protocol.extensions
            assert isinstance(ext, PerMessageDeflate)
            assert ext.local_no_context_takeover
            assert ext.remote_no_context_takeover
            await ws.send(json.dumps([2, "d1", "BootNotification", {"chargePointVendor": "V",
                                                                    "chargePointModel": "M"}]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0] == 3


async def test_a_location_needs_a_real_time_zone(db_url: str) -> None:
    """Reports cut local days in the station's zone: an unknown zone name is refused at entry."""
    async with running_central(db_url) as central, central.api() as api:
        body = {"id": "TZ1", "name": "Depot", "time_zone": "Mars/Olympus_Mons"}
        reply = await api.post("/api/v1/locations", json=body)
        assert reply.status_code == 422
        assert "time zone" in reply.text
        reply = await api.post("/api/v1/locations", json={**body, "time_zone": "Asia/Kolkata"})
        assert reply.status_code == 201
