"""A steady fleet: every charger sends a 10-sample MeterValues every ``interval_s`` seconds.

Fleet sizes grow in steps on one running system (chargers connect, boot, report status and
start a transaction, then the schedule runs for ``duration_s``; each charger has its own
phase within the interval). Measured per size:

* CALL→CALLRESULT, at the charger: from just before the frame is written to the answer read;
* CALL→row committed: the sample's timestamp is the moment the charger sent it (to the
  microsecond, same host clock); PostgreSQL records each transaction's commit time
  (``track_commit_timestamp = on``), and ``pg_xact_commit_timestamp(xmin) - time`` of each stored
  energy-register row is that sample's CALL→row latency. Every answered MeterValues must
  have its row: the stored count is checked against the answered count.

Topologies: ``embedded`` (``csms serve`` with the in-process bus: the answer waits for the
commit), ``mqtt`` (``csms serve`` answers after the outbox fsync; Mosquitto; a ``csms ingest``
worker commits) and the baseline ``echo`` (a raw websockets server answering at once: the
transport and load-generator floor). A second floor for CALL→row: single transactions of
10 rows COPY'd straight into the hypertable by one client, one after another.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from csms.bench.common import (
    PASSWORD,
    BenchCluster,
    cheap_hash,
    cpu_seconds,
    csms_ingest,
    csms_serve,
    percentile,
    processes,
    raw_server,
    register_chargers,
    scrape,
    start_mosquitto,
    wait_port,
)
from csms.bench.fleet import ClientFleet
from csms.run.ports import free_port

TOPOLOGIES = ("echo", "embedded", "mqtt")
# Read from the roles' /metrics around each phase, to say where the time went.
_METRICS = ("csms_ingest_commit_seconds_sum", "csms_ingest_commit_seconds_count", "csms_ingest_batch_rows_sum",
            "csms_bus_publish_seconds_sum", "csms_bus_publish_seconds_count")


def _diagnostics(before: dict[str, float], after: dict[str, float], writer: dict[str, float],
                 writer_after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Writer busy share (commit time / wall time), rows per batch, mean commit and bus hand-off times."""
    def d(a: dict[str, float], b: dict[str, float], k: str) -> float:
        return b[k] - a[k]

    batches = d(writer, writer_after, "csms_ingest_commit_seconds_count")
    publishes = d(before, after, "csms_bus_publish_seconds_count")
    commit_s = d(writer, writer_after, "csms_ingest_commit_seconds_sum")
    return {"writer_busy_share": round(commit_s / wall_s, 3),
            "rows_per_batch": round(d(writer, writer_after, "csms_ingest_batch_rows_sum") / batches) if batches else 0,
            "commit_mean_ms": round(1000 * commit_s / batches, 1) if batches else 0.0,
            "bus_handoff_mean_ms": round(1000 * d(before, after, "csms_bus_publish_seconds_sum") / publishes, 1)
            if publishes else 0.0}
_ROWS_SQL = ("FROM meter_samples WHERE charge_point_id LIKE $1 AND measurand = 'Energy.Active.Import.Register' "
             "AND context = 'Sample.Periodic' AND time >= $2 AND time < $3")


def _ms(sorted_ms: Sequence[float]) -> dict[str, float]:
    return {"p50": round(percentile(sorted_ms, 0.5), 2), "p99": round(percentile(sorted_ms, 0.99), 2),
            "max": round(sorted_ms[-1], 2) if sorted_ms else 0.0}


async def commit_latencies(url: str, prefix: str, since: float, until: float, expected: int,
                           timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until ``expected`` rows are stored (bounded), then CALL→row latencies from commit timestamps."""
    args = (prefix + "%", datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC))
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout_s
        stored = 0
        while time.monotonic() < deadline:
            stored = int(await conn.fetchval(f"SELECT count(*) {_ROWS_SQL}", *args))
            if stored >= expected:
                break
            await asyncio.sleep(0.5)
        rows = await conn.fetch(
            f"SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - time) * 1000 AS ms {_ROWS_SQL}", *args)
    finally:
        await conn.close()
    latencies = sorted(float(r["ms"]) for r in rows)
    return {"rows_expected": expected, "rows_stored": len(latencies), "call_row_ms": _ms(latencies)}


async def commit_floor(url: str, transactions: int) -> dict[str, float]:
    """Latency of one 10-row COPY transaction into meter_samples, one after another (no load)."""
    conn = await asyncpg.connect(url)
    cols = ["time", "charge_point_id", "measurand", "value", "unit", "raw_value", "received_at"]
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    latencies = []
    try:
        for i in range(transactions):
            rows = [(t0 + timedelta(seconds=i), "FLOOR", f"M{j}", float(j), "Wh", str(j), t0) for j in range(10)]
            started = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table("meter_samples", records=rows, columns=cols)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return _ms(sorted(latencies))


async def _topology(topology: str, sizes: Sequence[int], *, cluster: BenchCluster, tmp: Path, duration_s: float,
                    interval_s: float, per_process: int, source_offset: int, ready_timeout_s: float
                    ) -> dict[str, Any]:
    port = free_port()
    prefix = {"echo": "FX", "embedded": "FE", "mqtt": "FM"}[topology]
    url: str | None = None
    points: list[dict[str, Any]] = []
    http_port, ingest_http_port = free_port(), free_port()
    with processes() as procs, (tmp / f"server-{prefix}.log").open("ab") as log:
        ingest_pid: int | None = None
        if topology == "echo":
            procs.append(raw_server("echo", port))
        else:
            url = await cluster.new_database(f"fleet_{topology}")
            await register_chargers(url, [f"{prefix}{i}" for i in range(max(sizes))], cheap_hash())
            mqtt_url = None
            if topology == "mqtt":
                broker, mqtt_url = start_mosquitto(tmp)
                procs.append(broker)
                procs.append(csms_ingest(database_url=url, mqtt_url=mqtt_url, data_dir=tmp / "ingest", log=log,
                                         http_port=ingest_http_port))
                ingest_pid = procs[-1].pid
            procs.append(csms_serve(database_url=url, port=port, data_dir=tmp / f"state-{prefix}", log=log,
                                    mqtt_url=mqtt_url, extra=["--free-vend"], http_port=http_port))
        server = procs[-1]
        wait_port(port, server)
        writer_port = ingest_http_port if ingest_pid else http_port
        if url is not None:
            # Each role opens its HTTP (/metrics) listener on its own schedule, not with the OCPP port:
            # wait for both before the first scrape (a busy machine once refused it).
            wait_port(http_port, server)
            if ingest_pid:
                wait_port(ingest_http_port, procs[-2])

        async def metrics(port: int) -> dict[str, float]:
            return await asyncio.to_thread(scrape, port, _METRICS)
        fleet = ClientFleet(url=f"ws://127.0.0.1:{port}/ocpp", prefix=prefix, log_dir=tmp,
                            password=None if topology == "echo" else PASSWORD, session=topology != "echo",
                            per_process=per_process, source_offset=source_offset, ready_timeout_s=ready_timeout_s)
        try:
            for size in sizes:
                grown = await fleet.grow(size - fleet.total)
                # Every charger wakes up to schedule itself when the plan arrives (a burst of thousands
                # of coroutines per process): let that settle before the first MeterValues is due.
                start_at = time.time() + 2.0
                if url is not None:
                    m0, w0 = await metrics(http_port), await metrics(writer_port)
                    window_start = time.monotonic()
                cpu0 = cpu_seconds(server.pid), cpu_seconds(ingest_pid) if ingest_pid else 0.0
                steady = await fleet.steady(start_at=start_at, duration_s=duration_s, interval_s=interval_s)
                cpu1 = cpu_seconds(server.pid), cpu_seconds(ingest_pid) if ingest_pid else 0.0
                load = os.getloadavg()[0]
                point: dict[str, Any] = {
                    "chargers": size, "missing_at_start": grown["missing"], "messages": steady["sent"],
                    "ok": steady["ok"], "errors": steady["errors"], "unanswered": steady["unanswered"],
                    "rate_per_s": round(steady["ok"] / duration_s, 1),
                    "call_result_ms": _ms(steady["latencies_ms"]),
                    "server_cpu_share": round((cpu1[0] - cpu0[0]) / duration_s, 3),
                    "load_average_1m": round(load, 2)}
                if ingest_pid:
                    point["ingest_cpu_share"] = round((cpu1[1] - cpu0[1]) / duration_s, 3)
                if url is not None:
                    m1, w1 = await metrics(http_port), await metrics(writer_port)
                    point["diagnostics"] = _diagnostics(m0, m1, w0, w1, time.monotonic() - window_start)
                    point.update(await commit_latencies(url, prefix, start_at, start_at + duration_s + 1,
                                                        steady["ok"]))
                points.append(point)
        finally:
            await fleet.close()
    return {"topology": topology, "points": points}


async def run(*, cluster: BenchCluster, tmp: Path, sizes: Sequence[int], duration_s: float, interval_s: float,
              topologies: Sequence[str] = TOPOLOGIES, per_process: int = 5000, ready_timeout_s: float = 300.0,
              floor_transactions: int = 200) -> dict[str, Any]:
    floor_db = await cluster.new_database("commit_floor")
    floor = await commit_floor(floor_db, floor_transactions)
    out: dict[str, Any] = {}
    for i, topology in enumerate(topologies):
        out[topology] = await _topology(topology, sizes, cluster=cluster, tmp=tmp, duration_s=duration_s,
                                        interval_s=interval_s, per_process=per_process, source_offset=40 + i * 8,
                                        ready_timeout_s=ready_timeout_s)
    return {"benchmark": "steady_fleet", "sizes": list(sizes), "duration_s": duration_s, "interval_s": interval_s,
            "payload": "OCPP 1.6 MeterValues, 1 meterValue x 10 sampledValues, in a transaction",
            "commit_floor_ms": floor, "topologies": out}


def render(result: dict[str, Any]) -> str:
    lines = ["| topology | chargers | MeterValues/s | CALL→CALLRESULT p50 / p99 ms | CALL→row p50 / p99 ms | "
             "rows stored / answered | errors | server CPU (cores) | writer busy, rows/batch, ms/commit | "
             "bus hand-off ms | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for topo in result["topologies"].values():
        for p in topo["points"]:
            row = p.get("call_row_ms")
            cpu = f"{p['server_cpu_share']}" + (f" + ingest {p['ingest_cpu_share']}" if "ingest_cpu_share" in p else "")
            diag = p.get("diagnostics")
            lines.append(
                f"| {topo['topology']} | {p['chargers']:,} | {p['rate_per_s']:,} | "
                f"{p['call_result_ms']['p50']} / {p['call_result_ms']['p99']} | "
                + (f"{row['p50']} / {row['p99']} | {p['rows_stored']:,} / {p['ok']:,} |" if row else "– | – |")
                + f" {p['errors'] + p['unanswered']} | {cpu} | "
                + (f"{diag['writer_busy_share']:.0%}, {diag['rows_per_batch']:,}, {diag['commit_mean_ms']} | "
                   f"{diag['bus_handoff_mean_ms']} |" if diag else "– | – |")
                + f" {p['load_average_1m']} |")
    floor = result["commit_floor_ms"]
    lines += ["", f"Commit floor (one client, one 10-row COPY transaction at a time, no other load): "
                  f"p50 {floor['p50']} ms, p99 {floor['p99']} ms. Writer busy = time spent committing batches "
                  "÷ wall time (from the role's `csms_ingest_commit_seconds`); bus hand-off = time until a "
                  "MeterValues' events were durable (`csms_bus_publish_seconds`: committed for the in-process "
                  "bus, fsync'ed to the outbox for MQTT)."]
    return "\n".join(lines)
