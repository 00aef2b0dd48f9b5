"""``csms run --mqtt-url``: events travel through a real Mosquitto to the ingest worker."""

from __future__ import annotations

import asyncio
import shutil
import time

import asyncpg
import pytest
import websockets

from tests.harness import MosquittoService, PostgresService, make_shared_tmpdir
from tests.processes import basic_auth, csms_command, start_csms

PASSWORD = "correct-horse-battery-staple"

pytestmark = pytest.mark.integration


async def test_connection_events_reach_timescaledb_through_mosquitto(postgres: PostgresService,
                                                                    mosquitto: MosquittoService) -> None:
    db_url = postgres.create_database("mqtt")
    workdir = make_shared_tmpdir("csms-mqtt-")
    await asyncio.to_thread(csms_command, ["charge-points", "add", "CP-MQTT", "--password", PASSWORD,
                                           "--database-url", db_url])
    proc = start_csms(["run", "--database-url", db_url, "--mqtt-url", mosquitto.url, "--node-id", "node-a"],
                      workdir=workdir)
    try:
        await asyncio.to_thread(proc.wait_healthy)
        async with websockets.connect(proc.ws + "/CP-MQTT", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("CP-MQTT", PASSWORD)) as ws:
            assert ws.subprotocol == "ocpp2.0.1"
        conn = await asyncpg.connect(db_url)
        try:
            deadline = time.monotonic() + 30
            events: list[str] = []
            while time.monotonic() < deadline:
                rows = await conn.fetch("SELECT event, node_id FROM connection_events WHERE charge_point_id = "
                                        "'CP-MQTT' ORDER BY time")
                events = [r["event"] for r in rows]
                if len(events) == 2:
                    assert {r["node_id"] for r in rows} == {"node-a"}
                    break
                await asyncio.sleep(0.1)
            assert events == ["connected", "disconnected"], proc.log()
        finally:
            await conn.close()
    finally:
        assert await asyncio.to_thread(proc.stop) == 0, proc.log()
        postgres.drop_database(db_url)
        shutil.rmtree(workdir, ignore_errors=True)
