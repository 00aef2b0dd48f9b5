"""Ingest throughput next to a raw COPY into the same hypertable, measured in the same run.

Three figures, each on a fresh range of keys in the same ``meter_samples`` hypertable:

* ``raw_copy``: asyncpg ``copy_records_to_table`` straight into the hypertable, 5,000-row
  batches (no de-duplication: the ceiling), once before and once after the others, the mean
  being the baseline;
* ``writer``: our idempotent path for the same rows as events — rows sorted by natural key,
  binary COPY into the table inside a savepoint, and only if a row is already stored the
  de-duplicating fallback (COPY into staging, ``INSERT … ON CONFLICT DO NOTHING``);
* ``bus_to_rows``: the same events published to Mosquitto first as MessagePack batches,
  then consumed by the ingest worker (shared subscription, manual ack after commit),
  timed from the worker's start until every row is committed.

Usage: python -m ingest.bench [--samples 200000] [--json FILE] [--database-url URL]

Without ``--database-url`` a private embedded cluster is started through ``csms run``; with
it, the given (empty or migrated) database is used. The benchmark suite (``python -m
csms.bench``) runs this module as a process and passes a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.worker import MeteredWriter, MqttIngestWorker
from ingest.writer import TimescaleWriter
from schemas import EVENT_SCHEMA_VERSION
from schemas.events import EventBatch, MeterEvent, Sample, encode_batch
from schemas.migrate import apply_migrations
from schemas.topics import events_subscription, events_topic, parse_mqtt_url

BATCH_ROWS = 5000
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage", "SoC",
              "Current.Offered", "Power.Offered", "Temperature", "Frequency", "Power.Factor")


def _events(prefix: str, samples: int) -> list[MeterEvent]:
    """MeterEvents of 10 samples each, on 100 charge points, keys unique per prefix."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    out = []
    for i in range(samples // 10):
        ts = t0 + timedelta(seconds=i // 100)
        out.append(MeterEvent(charge_point_id=f"{prefix}{i % 100}", received_at=now, evse_id=1, connector_id=1,
                              transaction_uid="", samples=[
                                  Sample(ts, m, "", "Outlet", "Sample.Periodic", float(i), "W", str(i), "W")
                                  for m in MEASURANDS]))
    return out


def _rows(events: list[MeterEvent]) -> list[tuple[Any, ...]]:
    return [(s.time, e.charge_point_id, e.evse_id, e.connector_id, e.transaction_uid, s.measurand, s.phase,
             s.location, s.context, s.value, s.unit, s.raw_value, s.raw_unit, s.flags, e.received_at)
            for e in events for s in e.samples]


async def _raw_copy(url: str, samples: int, prefix: str) -> float:
    rows = _rows(_events(prefix, samples))
    cols = ["time", "charge_point_id", "evse_id", "connector_id", "transaction_uid", "measurand", "phase",
            "location", "context", "value", "unit", "raw_value", "raw_unit", "quality_flags", "received_at"]
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH_ROWS):
            async with conn.transaction():
                await conn.copy_records_to_table("meter_samples", records=rows[i:i + BATCH_ROWS], columns=cols)
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def _writer(url: str, samples: int) -> float:
    events = _events("WRT", samples)
    per_batch = BATCH_ROWS // 10
    writer = await TimescaleWriter.connect(database_url=url)
    try:
        started = time.perf_counter()
        for i in range(0, len(events), per_batch):
            await writer.write_batch(events[i:i + per_batch])
        return samples / (time.perf_counter() - started)
    finally:
        await writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "max_inflight_messages 1000\npersistence false\nset_tcp_nodelay true\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"mqtt://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


async def _bus_to_rows(url: str, mqtt_url: str, samples: int) -> float:
    events = _events("BUS", samples)
    per_message = 50  # events per bus message, as a node's outbox groups them
    registry = CollectorRegistry()
    metrics = IngestMetrics.create(registry)
    writer = MeteredWriter(writer=await TimescaleWriter.connect(database_url=url), metrics=metrics)
    worker = MqttIngestWorker(writer=writer, metrics=metrics, mqtt_url=mqtt_url, client_id="bench-ingest",
                              batch_max_rows=BATCH_ROWS, batch_max_delay_ms=200, max_in_flight_messages=1000,
                              retry_max_s=10.0)
    broker = parse_mqtt_url(mqtt_url)
    host, port = broker.host, broker.port
    # Create the worker's persistent session and shared subscription, leave it offline, publish
    # the whole stream into it, then time the worker draining it into the database.
    async with aiomqtt.Client(host, int(port), identifier="bench-ingest", clean_session=False) as session:
        await session.subscribe(events_subscription(), qos=1)
    async with aiomqtt.Client(host, int(port), max_inflight_messages=100) as pub:
        for i in range(0, len(events), per_message):
            batch = EventBatch(schema_version=EVENT_SCHEMA_VERSION, node_id="bench", first_seq=i,
                               events=list(events[i:i + per_message]))
            await pub.publish(events_topic("bench"), encode_batch(batch), qos=1)
    conn = await asyncpg.connect(url)
    try:
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        # The worker's own committed-rows counter, so that the timing loop puts no load on the database.
        while (registry.get_sample_value("csms_ingest_rows_written_total", {"table": "meter_samples"}) or 0) < samples:
            if time.perf_counter() - started > 300:
                raise RuntimeError("bus_to_rows did not finish within 300 s")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM meter_samples WHERE charge_point_id LIKE 'BUS%'")
        if stored != samples:
            raise RuntimeError(f"bus_to_rows stored {stored} rows, expected {samples}")
        stop.set()
        await task
        return samples / elapsed
    finally:
        await conn.close()
        await writer.close()


async def run(samples: int, database_url: str | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    tmp.chmod(0o755)
    server: subprocess.Popen[bytes] | None = None
    if database_url is None:
        # The embedded cluster lives in the csms package; ingest must not import it, so start
        # PostgreSQL through the command line that owns it.
        server = subprocess.Popen([sys.executable, "-m", "csms", "run", "--data-dir", str(tmp / "pg"),
                                   "--ocpp-port", str(_free_port()), "--http-port", str(_free_port()),
                                   "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker: subprocess.Popen[bytes] | None = None
    try:
        url = database_url or ""
        for _ in range(0 if database_url else 600):
            out = subprocess.run([sys.executable, "-m", "csms", "db-url", "--data-dir", str(tmp / "pg")],
                                 capture_output=True, text=True, check=False)
            if out.returncode == 0:
                try:
                    c = await asyncpg.connect(out.stdout.strip(), timeout=2)
                    await c.close()
                    url = out.stdout.strip()
                    break
                except (OSError, asyncpg.PostgresError):
                    pass
            await asyncio.sleep(0.2)
        if not url:
            raise RuntimeError("embedded PostgreSQL did not come up")
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        broker, mqtt_url = _mosquitto(tmp)
        # The raw COPY runs first and last (on fresh keys each time) and the baseline is their
        # mean, so that neither side gains from the table being emptier or the machine quieter.
        raw_first = await _raw_copy(url, samples, "RAW")
        ours = await _writer(url, samples)
        bus = await _bus_to_rows(url, mqtt_url, samples)
        raw_last = await _raw_copy(url, samples, "RAX")
        raw = (raw_first + raw_last) / 2
        return {"benchmark": "ingest", "samples": samples, "batch_rows": BATCH_ROWS,
                "raw_copy_runs": [round(raw_first), round(raw_last)],
                "rows_per_s": {"raw_copy": round(raw), "writer": round(ours), "bus_to_rows": round(bus)},
                "ratio_to_raw_copy": {"writer": round(ours / raw, 3), "bus_to_rows": round(bus / raw, 3)}}
    finally:
        if broker is not None:
            broker.kill()
            broker.wait()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


def render(result: dict[str, Any]) -> str:
    r, q = result["rows_per_s"], result["ratio_to_raw_copy"]
    return "\n".join([
        f"Ingest into meter_samples ({result['samples']} samples per figure, {result['batch_rows']}-row batches)",
        "", "| path | rows/s | ratio to raw COPY |", "|---|---|---|",
        f"| raw COPY into the hypertable (baseline; mean of a run before and after) | {r['raw_copy']} | 1.0 |",
        f"| writer: idempotent batch (sorted COPY, de-duplicating fallback) | {r['writer']} | {q['writer']} |",
        f"| bus → rows: MQTT → ingest worker → committed | {r['bus_to_rows']} | {q['bus_to_rows']} |"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.bench")
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--database-url", help="use this database instead of a private embedded cluster")
    args = parser.parse_args()
    result = asyncio.run(run(args.samples, args.database_url))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
