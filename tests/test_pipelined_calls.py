"""A charger that pipelines far more CALLs than its queue holds: the socket is not read while the
queue is full (back-pressure), and every CALL is still stored once and answered once, in order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import websockets

from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

CALLS = 300


async def test_pipelined_calls_beyond_the_queue_are_all_stored_and_answered_in_order(
        db_url: str, db: asyncpg.Connection) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    async with running_central(db_url, max_queued_calls_per_connection=1) as central:
        await central.register("PIPE")
        async with websockets.connect(f"{central.ws_base}/PIPE", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("PIPE", PASSWORD)) as ws:
            await ws.send(json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "V",
                                                                      "chargePointModel": "M"}]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))[2]["status"] == "Accepted"
            frames = [json.dumps([2, f"mv{i}", "MeterValues", {"connectorId": 1, "meterValue": [
                {"timestamp": iso(start + timedelta(seconds=i)), "sampledValue": [{"value": str(1000 + i)}]}]}])
                for i in range(CALLS)]
            for frame in frames:  # written back to back: many CALLs arrive in one read of the socket
                ws.protocol.send_text(frame.encode())
            ws.send_data()
            answers = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(CALLS)]
    assert [a[:2] for a in answers] == [[3, f"mv{i}"] for i in range(CALLS)]
    values = await db.fetch("SELECT value FROM meter_samples WHERE charge_point_id = 'PIPE' ORDER BY time")
    assert [r["value"] for r in values] == [float(1000 + i) for i in range(CALLS)]
