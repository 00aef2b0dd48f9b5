"""Nothing lost, nothing doubled: the production topology under the faults it must survive.

Each test runs ``csms serve`` (gateway + outbox) and ``csms ingest`` as real processes
against a real Mosquitto and TimescaleDB, drives chargers that replay unanswered
messages like real ones, injects a fault, and compares what was stored with what the
chargers sent, sample by sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from csms.run.embedded_pg import EmbeddedPostgres
from csms.run.ports import free_port
from tests.central import PASSWORD
from tests.harness import MosquittoService, PostgresService, make_shared_tmpdir, start_mosquitto
from tests.pipeline import Role, csms_ingest, csms_serve, prepare, stored_keys, wait_for_rows
from tests.replaying_charger import ReplayingCharger, expected_keys

pytestmark = pytest.mark.integration

CHARGERS = [f"PF{i}" for i in range(4)]
MESSAGES = 150
START = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_shared_tmpdir("csms-pipeline-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def pipeline_db(postgres: PostgresService) -> AsyncIterator[str]:
    url = postgres.create_database("pipe")
    await prepare(url, CHARGERS)
    try:
        yield url
    finally:
        postgres.drop_database(url)


def chargers(url: str, *, pace_s: float = 0.0, count: int = MESSAGES) -> list[ReplayingCharger]:
    return [ReplayingCharger(url=url, cp_id=cp, password=PASSWORD, start=START + timedelta(days=i), count=count,
                             pace_s=pace_s) for i, cp in enumerate(CHARGERS)]


def expected(fleet: list[ReplayingCharger]) -> Counter[tuple[str, datetime, str, str]]:
    keys: set[tuple[str, datetime, str, str]] = set()
    for c in fleet:
        keys |= expected_keys(c.cp_id, c.start, c.count)
    return Counter(keys)


async def assert_exactly_once(db_url: str, fleet: list[ReplayingCharger], *roles: Role) -> None:
    want = expected(fleet)
    got_n = await wait_for_rows(db_url, CHARGERS, len(want))
    got = Counter(await stored_keys(db_url, CHARGERS))
    logs = "\n".join(r.log()[-1500:] for r in roles)
    assert got_n == len(want), f"{got_n} of {len(want)} samples stored\n{logs}"
    assert got == want, logs  # every sample once: none missing, none doubled, nothing else


@contextlib.asynccontextmanager
async def topology(workdir: Path, db_url: str, mqtt_url: str, *, node_id: str,
                   workers: tuple[str, ...]) -> AsyncIterator[tuple[Role, list[Role], str]]:
    """``csms serve`` (one node) and ``csms ingest`` workers, healthy; stopped afterwards."""
    port = free_port()
    serve = csms_serve(workdir, db_url, mqtt_url, ocpp_port=port, node_id=node_id)
    ingests = [csms_ingest(workdir, db_url, mqtt_url, node_id=w) for w in workers]
    roles = [serve, *ingests]
    for role in roles:
        role.start()
    try:
        for role in roles:
            await asyncio.to_thread(role.wait_healthy)
        # Healthy is not subscribed: a worker that joins the shared subscription late takes no share of
        # the stream (and what is published before any subscription waits for the outbox resend).
        for role in ingests:
            await asyncio.to_thread(role.wait_log, "ingest consuming", 60)
        yield serve, ingests, f"ws://127.0.0.1:{port}/ocpp"
    finally:
        for role in roles:
            role.stop()


async def _when(fleet: list[ReplayingCharger], answered_share: float, timeout_s: float = 120.0) -> None:
    target = answered_share * sum(c.count for c in fleet)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while sum(c.answered for c in fleet) < target:
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {target} messages answered"
        await asyncio.sleep(0.05)


async def test_ingest_killed_mid_batch_and_restarted(workdir: Path, pipeline_db: str,
                                                     mosquitto: MosquittoService) -> None:
    async with topology(workdir, pipeline_db, mosquitto.url, node_id="kill-ingest",
                        workers=("ingest-k",)) as (serve, (ingest,), url):
        fleet = chargers(url, pace_s=0.005)
        drive = asyncio.gather(*(c.run() for c in fleet))
        await _when(fleet, 0.3)
        ingest.kill()  # SIGKILL mid-stream: whatever it had received but not committed is not acked
        await asyncio.sleep(1.0)
        ingest.start()
        await drive
        await assert_exactly_once(pipeline_db, fleet, serve, ingest)
        await asyncio.to_thread(ingest.wait_healthy)
        metrics = await asyncio.to_thread(ingest.metrics)
        lag_count = next(float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith("csms_ingest_end_to_end_lag_seconds_count"))
        assert lag_count > 0  # the end-to-end lag histogram is exported and filled


async def test_two_ingest_workers_share_the_stream(workdir: Path, pipeline_db: str,
                                                   mosquitto: MosquittoService) -> None:
    async with topology(workdir, pipeline_db, mosquitto.url, node_id="two-workers",
                        workers=("ingest-a", "ingest-b")) as (serve, workers, url):
        fleet = chargers(url)
        await asyncio.gather(*(c.run() for c in fleet))
        await assert_exactly_once(pipeline_db, fleet, serve, *workers)
        written = []
        for w in workers:
            text = await asyncio.to_thread(w.metrics)
            written.append(sum(float(line.split()[-1]) for line in text.splitlines()
                               if line.startswith('csms_ingest_rows_written_total{table="meter_samples"}')))
        assert all(n > 0 for n in written), written  # both workers took part


async def test_broker_killed_and_restarted(workdir: Path, pipeline_db: str) -> None:
    broker = start_mosquitto()
    try:
        async with topology(workdir, pipeline_db, broker.url, node_id="kill-broker",
                            workers=("ingest-kb",)) as (serve, (ingest,), url):
            fleet = chargers(url, pace_s=0.005)
            drive = asyncio.gather(*(c.run() for c in fleet))
            await _when(fleet, 0.3)
            broker.kill()  # what the broker held in memory is gone; the outbox still has it
            await asyncio.sleep(2.0)
            broker.restart()
            await drive  # chargers were answered all along: the outbox is the durability point
            await assert_exactly_once(pipeline_db, fleet, serve, ingest)
            assert all(c.retries == 0 for c in fleet)
            # What waited in the outbox went out bundled: fewer MQTT messages than batches.
            counters = _counters(await asyncio.to_thread(serve.metrics))
            assert counters["csms_bus_mqtt_messages_total"] < counters["csms_bus_published_batches_total"], counters
    finally:
        broker.stop()


def _counters(text: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(("csms_bus_mqtt_messages_total", "csms_bus_published_batches_total"))}


async def test_central_system_killed_while_chargers_send(workdir: Path, pipeline_db: str,
                                                         mosquitto: MosquittoService) -> None:
    async with topology(workdir, pipeline_db, mosquitto.url, node_id="kill-csms",
                        workers=("ingest-kc",)) as (serve, (ingest,), url):
        fleet = chargers(url, pace_s=0.005)
        drive = asyncio.gather(*(c.run() for c in fleet))
        await _when(fleet, 0.3)
        serve.kill()  # SIGKILL: answered messages are in the fsync'ed outbox, the rest are replayed
        await asyncio.sleep(1.0)
        serve.start()  # same data directory and node id: the outbox is read back and sent again
        await drive
        await assert_exactly_once(pipeline_db, fleet, serve, ingest)
        assert any(c.reconnects > 0 for c in fleet)


async def test_timescaledb_down_for_30_seconds(workdir: Path, mosquitto: MosquittoService) -> None:
    pg = EmbeddedPostgres(data_dir=workdir / "own-pg", port=free_port())
    db_url = (await asyncio.to_thread(pg.start)).url()
    await prepare(db_url, CHARGERS)
    try:
        async with topology(workdir, db_url, mosquitto.url, node_id="db-down",
                            workers=("ingest-dd",)) as (serve, (ingest,), url):
            fleet = chargers(url, pace_s=0.05, count=700)
            drive = asyncio.gather(*(c.run(deadline_s=240) for c in fleet))
            await _when(fleet, 0.1)
            await asyncio.to_thread(pg.stop)
            assert not await asyncio.to_thread(pg.is_running)
            await asyncio.sleep(30)  # chargers keep sending: the outbox and the broker hold the data
            answered_while_down = sum(c.answered for c in fleet)
            await asyncio.to_thread(pg.start)
            await drive
            await assert_exactly_once(db_url, fleet, serve, ingest)
            assert answered_while_down > 0.1 * sum(c.count for c in fleet)
            assert "retrying" in ingest.log()
    finally:
        await asyncio.to_thread(pg.stop)
