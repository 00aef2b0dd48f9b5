"""The acknowledge-after-commit adapter: what was received but not acknowledged before a
crash is delivered again; what was acknowledged is not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import aiomqtt
import pytest

from ingest.mqtt_consumer import AckingConsumer
from schemas import EVENT_SCHEMA_VERSION
from schemas.events import EventBatch, TransactionEvent, encode_batch
from schemas.topics import events_topic, parse_mqtt_url
from tests.harness import MosquittoService, PostgresService, make_shared_tmpdir
from tests.pipeline import csms_ingest, prepare

pytestmark = pytest.mark.integration

CRASHING_CONSUMER = """
import asyncio, sys, time
from ingest.mqtt_consumer import AckingConsumer
async def main():
    c = AckingConsumer(url=sys.argv[1], client_id=sys.argv[2], topic=sys.argv[3], max_queued_messages=100)
    async with c:
        print("subscribed", flush=True)  # SUBACK received: what is published from now on reaches us
        got = []
        while len(got) < 5:
            m = await c.get(10)
            if m is not None:
                got.append(m)
        for m in got[:2]:
            c.ack(m)
        # The broker handles one connection's packets in order: once it has acknowledged this publish,
        # it has processed the two PUBACKs sent before it (a fixed sleep is not enough on a busy machine).
        await c.publish(sys.argv[3] + "/barrier", b"acks sent")
        print("received", [m.payload.decode() for m in got], flush=True)
        time.sleep(600)  # then the process is killed: no disconnect, no more acks
asyncio.run(main())
"""


async def test_unacknowledged_messages_are_redelivered_after_a_crash(mosquitto: MosquittoService) -> None:
    topic = f"test/redelivery/{uuid.uuid4().hex}"
    client_id = f"crashy-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_CONSUMER, mosquitto.url, client_id, topic],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        # Wait until the consumer is subscribed, not a fixed time: a message published before reaches nobody.
        ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert ready.startswith("subscribed"), ready
        addr = parse_mqtt_url(mosquitto.url)
        async with aiomqtt.Client(addr.host, addr.port) as publisher:
            for i in range(5):
                await publisher.publish(topic, f"m{i}".encode(), qos=1)
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith("received")
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    consumer = AckingConsumer(url=mosquitto.url, client_id=client_id, topic=topic, max_queued_messages=100)
    async with consumer:
        again: list[str] = []
        # Wait for the three redeliveries (bounded per message), then take whatever else comes: m0/m1
        # again would be a duplicate.
        while len(again) < 3 and (m := await consumer.get(30)) is not None:
            again.append(m.payload.decode())
            consumer.ack(m)
        while len(again) < 20 and (m := await consumer.get(1)) is not None:
            again.append(m.payload.decode())
            consumer.ack(m)
    assert sorted(again) == ["m2", "m3", "m4"]


async def test_ended_before_started_through_the_bus_is_one_session(postgres: PostgresService,
                                                                   mosquitto: MosquittoService) -> None:
    db_url = postgres.create_database("ooo")
    await prepare(db_url, [])
    workdir = make_shared_tmpdir("csms-ooo-")
    worker = csms_ingest(workdir, db_url, mosquitto.url, node_id="ingest-ooo")
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        # Messages published before the shared subscription exists reach nobody (in production
        # the outbox sends them again); wait until the worker has subscribed.
        await asyncio.to_thread(worker.wait_log, "ingest consuming")
        t0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
        now = datetime.now(UTC)
        events = [
            TransactionEvent(charge_point_id="OOO", received_at=now, transaction_uid="tx-ooo",
                             time=t0.replace(hour=10), kind="ended", seq_no=2, meter_stop_wh=20000.0,
                             stop_reason="EVDisconnected", trigger_reason="EVDeparted"),
            TransactionEvent(charge_point_id="OOO", received_at=now, transaction_uid="tx-ooo",
                             time=t0.replace(minute=30), kind="updated", seq_no=1, charging_state="Charging",
                             trigger_reason="ChargingStateChanged"),
            TransactionEvent(charge_point_id="OOO", received_at=now, transaction_uid="tx-ooo", time=t0,
                             kind="started", seq_no=0, evse_id=1, connector_id=1, id_token="T",
                             meter_start_wh=5000.0, charging_state="EVConnected", trigger_reason="Authorized"),
        ]
        addr = parse_mqtt_url(mosquitto.url)
        async with aiomqtt.Client(addr.host, addr.port) as publisher:
            for seq, ev in enumerate(events):  # one bus message each, in the wrong order
                batch = EventBatch(schema_version=EVENT_SCHEMA_VERSION, node_id="ooo-node", first_seq=seq,
                                   events=[ev])
                await publisher.publish(events_topic("ooo-node"), encode_batch(batch), qos=1)
        import asyncpg

        conn = await asyncpg.connect(db_url)
        try:
            row = None
            deadline = asyncio.get_running_loop().time() + 60   # bounded in time: ingest is slower when busy
            while asyncio.get_running_loop().time() < deadline:
                row = await conn.fetchrow("SELECT * FROM transactions WHERE transaction_uid = 'tx-ooo'")
                if row is not None and row["started_at"] is not None and row["stopped_at"] is not None:
                    break
                await asyncio.sleep(0.1)
            assert row is not None
            assert row["started_at"] == t0
            assert row["stopped_at"] == t0.replace(hour=10)
            assert float(row["energy_wh"]) == 15000.0
            assert row["charging_state"] == "Charging"  # seqNo 1 is the latest state change, not arrival order
            assert row["last_seq_no"] == 2
            assert await conn.fetchval("SELECT count(*) FROM transactions") == 1
        finally:
            await conn.close()
    finally:
        worker.stop()
        postgres.drop_database(db_url)
