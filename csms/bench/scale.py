"""A fleet across gateway workers (issue 13): how many chargers one host holds, and how they behave.

``csms serve --workers N`` (SO_REUSEPORT, per-worker metrics ports) on the suite's PostgreSQL, with a
private Mosquitto and one ``csms ingest``; chargers offer permessage-deflate and come from several
load-generator processes, each from its own 127.0.0.x source address (a process may hold at most
20,000 open files here, and one source address reaches the port through at most 28,232 ephemeral
ports). The fleet grows in steps; a step that does not connect and boot completely within
``step_timeout_s`` ends the climb, and what ran out is measured: load-generator and worker CPU,
memory available, the open files of the fullest worker, connections per source address. After
each step the workers' resident memory is summed (RSS per connection = growth over the idle
workers / chargers held). Then every charger held sends a 10-sample MeterValues every
``interval_s`` at its own phase, for ``duration_s``: CALL→CALLRESULT at the charger, CALL→row
committed from PostgreSQL's commit timestamps, stored rows counted against answered MeterValues.

Baseline in the same run: the same fleet (as many chargers as csms held, same clients, the
gateway's deflate windows and context-takeover setting) against N raw websockets echo processes
sharing the port, with the same steady load.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csms.bench.common import (
    PASSWORD,
    BenchCluster,
    cheap_hash,
    cpu_seconds,
    csms_ingest,
    processes,
    register_chargers,
    start_mosquitto,
)
from csms.bench.connections import RAW_DEFLATE
from csms.bench.fleet import ClientFleet
from csms.bench.steady import _ms, commit_latencies
from csms.bench.workers import ServerGroup, busy_share, machine_cpu_ticks, mem_available_bytes
from csms.gateway.server import DEFLATE_NO_CONTEXT_TAKEOVER
from csms.run.ports import free_port

KIB = 1024
EPHEMERAL_PORTS = 60999 - 32768 + 1
OPEN_FILES_PER_PROCESS = 20_000


def _loadgen_cpu(fleet: ClientFleet) -> float:
    total = 0.0
    for p in fleet.processes:
        try:
            total += cpu_seconds(p.proc.pid)
        except (OSError, IndexError):
            continue
    return total


def _ran_out(step: dict[str, Any], workers: int) -> str:
    """Which resource was exhausted at a step that did not connect in time (measured, in order)."""
    cores = os.cpu_count() or 1
    found = []
    if step["worker_max_open_files"] >= 0.99 * (OPEN_FILES_PER_PROCESS - 110):
        found.append(f"open files of a worker ({step['worker_max_open_files']:,} of {OPEN_FILES_PER_PROCESS:,})")
    if step["mem_available_bytes"] < 1 << 30:
        found.append(f"memory (only {step['mem_available_bytes'] / 2**30:.1f} GiB available)")
    if step["machine_cpu_busy"] >= 0.9:
        ours = step["loadgen_cpu_cores"] + step["server_cpu_cores"]
        found.append(f"CPU: the machine was {step['machine_cpu_busy']:.0%} busy ({cores} cores; the load generators "
                     f"{step['loadgen_cpu_cores']} and the {workers} workers {step['server_cpu_cores']} cores, "
                     f"everything else (PostgreSQL, ingest, broker, other programs) "
                     f"{max(0.0, step['machine_cpu_busy'] * cores - ours):.2f}; load average "
                     f"{step['load_average_1m']}), so handshakes and boots queued past the chargers' timeouts")
    if step["max_per_source"] >= EPHEMERAL_PORTS:
        found.append(f"ephemeral ports ({step['max_per_source']:,} per source address)")
    return "; ".join(found) or f"not identified (errors: {'; '.join(step['errors'])[:300]})"


async def _climb(group: ServerGroup, fleet: ClientFleet, steps: Sequence[int], step_timeout_s: float,
                 settle_s: float) -> tuple[list[dict[str, Any]], str]:
    idle = group.rss_bytes()
    points: list[dict[str, Any]] = []
    ran_out = ""
    for size in steps:
        t0, cpu0, lg0, ticks0 = time.monotonic(), group.cpu_seconds(), _loadgen_cpu(fleet), machine_cpu_ticks()
        fleet.ready_timeout_s = step_timeout_s
        grown = await fleet.grow(size - fleet.total)
        wall = time.monotonic() - t0
        await asyncio.sleep(settle_s)
        held = (points[-1]["held"] if points else 0) + grown["booted"]
        rss = group.rss_bytes()
        point = {"chargers": size, "held": held, "missing": grown["missing"], "connect_s": round(wall, 1),
                 "connect_failures": grown["connect_failures"],
                 "deflate_negotiated": (points[-1]["deflate_negotiated"] if points else 0)
                 + grown["deflate_negotiated"],
                 "rss_bytes": rss, "rss_per_connection_kib": round((rss - idle) / held / KIB, 2) if held else 0.0,
                 "server_cpu_cores": round((group.cpu_seconds() - cpu0) / wall, 2),
                 "loadgen_cpu_cores": round((_loadgen_cpu(fleet) - lg0) / wall, 2),
                 "machine_cpu_busy": busy_share(ticks0, machine_cpu_ticks()),
                 "worker_max_open_files": group.max_open_files(), "mem_available_bytes": mem_available_bytes(),
                 "loadgen_processes": len(fleet.processes), "max_per_source": fleet.per_process,
                 "load_average_1m": round(os.getloadavg()[0], 2), "errors": grown["errors"]}
        points.append(point)
        if grown["missing"]:
            ran_out = _ran_out(point, group.count)
            break
    return points, ran_out


async def _steady(fleet: ClientFleet, group: ServerGroup, duration_s: float, interval_s: float) -> dict[str, Any]:
    start_at = time.time() + 3.0
    cpu0, lg0, ticks0 = group.cpu_seconds(), _loadgen_cpu(fleet), machine_cpu_ticks()
    steady = await fleet.steady(start_at=start_at, duration_s=duration_s, interval_s=interval_s)
    return {"start_at": start_at, "messages": steady["sent"], "ok": steady["ok"], "errors": steady["errors"],
            "unanswered": steady["unanswered"], "rate_per_s": round(steady["ok"] / duration_s, 1),
            "call_result_ms": _ms(steady["latencies_ms"]),
            "server_cpu_cores": round((group.cpu_seconds() - cpu0) / duration_s, 2),
            "loadgen_cpu_cores": round((_loadgen_cpu(fleet) - lg0) / duration_s, 2),
            "machine_cpu_busy": busy_share(ticks0, machine_cpu_ticks()),
            "load_average_1m": round(os.getloadavg()[0], 2)}


async def _csms(*, cluster: BenchCluster, tmp: Path, workers: int, steps: Sequence[int], per_process: int,
                step_timeout_s: float, duration_s: float, interval_s: float) -> dict[str, Any]:
    prefix = "WC"
    url = await cluster.new_database("fleet_workers")
    await register_chargers(url, [f"{prefix}{i}" for i in range(max(steps))], cheap_hash())
    port = free_port()
    with processes() as procs, (tmp / "server-workers.log").open("ab") as log:
        broker, mqtt_url = start_mosquitto(tmp)
        procs.append(broker)
        procs.append(csms_ingest(database_url=url, mqtt_url=mqtt_url, data_dir=tmp / "ingest-workers", log=log))
        group = ServerGroup("csms", port, workers, database_url=url, mqtt_url=mqtt_url,
                            data_dir=tmp / "state-workers", log=log, extra=("--free-vend",))
        fleet = ClientFleet(url=f"ws://127.0.0.1:{port}/ocpp", prefix=prefix, log_dir=tmp, password=PASSWORD,
                            deflate=True, session=True, per_process=per_process, source_offset=140)
        try:
            await asyncio.to_thread(group.start)
            points, ran_out = await _climb(group, fleet, steps, step_timeout_s, 2.0)
            steady = await _steady(fleet, group, duration_s, interval_s)
            steady.update(await commit_latencies(url, prefix, steady["start_at"],
                                                 steady["start_at"] + duration_s + 1, steady["ok"], timeout_s=120))
        finally:
            await fleet.close()
            await asyncio.to_thread(group.stop)
    return {"server": f"csms serve --workers {workers}", "points": points, "ran_out": ran_out,
            "held": points[-1]["held"] if points else 0, "steady": steady}


async def _raw(*, tmp: Path, workers: int, chargers: int, per_process: int, step_timeout_s: float,
               duration_s: float, interval_s: float, deflate: str) -> dict[str, Any]:
    port = free_port()
    group = ServerGroup("raw", port, workers, deflate=deflate)
    fleet = ClientFleet(url=f"ws://127.0.0.1:{port}/ocpp", prefix="WR", log_dir=tmp, deflate=True,
                        per_process=per_process, source_offset=200)
    try:
        await asyncio.to_thread(group.start)
        points, ran_out = await _climb(group, fleet, [chargers], step_timeout_s, 2.0)
        steady = await _steady(fleet, group, duration_s, interval_s)
    finally:
        await fleet.close()
        await asyncio.to_thread(group.stop)
    return {"server": f"raw websockets echo × {workers} (SO_REUSEPORT)", "points": points, "ran_out": ran_out,
            "held": points[-1]["held"] if points else 0, "steady": steady}


async def run(*, cluster: BenchCluster, tmp: Path, workers: int, steps: Sequence[int], per_process: int,
              step_timeout_s: float, duration_s: float, interval_s: float) -> dict[str, Any]:
    ours = await _csms(cluster=cluster, tmp=tmp, workers=workers, steps=steps, per_process=per_process,
                       step_timeout_s=step_timeout_s, duration_s=duration_s, interval_s=interval_s)
    # The baseline's steady load runs one interval (every charger sends once): enough for its latency floor.
    raw = await _raw(tmp=tmp, workers=workers, chargers=max(1, ours["held"]), per_process=per_process,
                     step_timeout_s=step_timeout_s, duration_s=min(duration_s, interval_s), interval_s=interval_s,
                     deflate=RAW_DEFLATE["on-nct" if DEFLATE_NO_CONTEXT_TAKEOVER else "on"])
    return {"benchmark": "fleet_workers", "workers": workers, "steps": list(steps), "target": max(steps),
            "per_process": per_process, "step_timeout_s": step_timeout_s, "duration_s": duration_s,
            "interval_s": interval_s, "raw_duration_s": min(duration_s, interval_s),
            "payload": "OCPP 1.6 MeterValues, 1 meterValue x 10 sampledValues, in a transaction",
            "csms": ours, "raw": raw}


def render(result: dict[str, Any]) -> str:
    lines = ["| server | chargers (step) | held | connect s | KiB per connection (all workers) | deflate "
             "negotiated | server CPU cores | load-generator CPU cores | machine CPU busy | fullest worker's open "
             "files | memory available GiB | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for side in (result["csms"], result["raw"]):
        for p in side["points"]:
            lines.append(f"| {side['server']} | {p['chargers']:,} | {p['held']:,} | {p['connect_s']} | "
                         f"{p['rss_per_connection_kib']} | {p['deflate_negotiated']:,} | {p['server_cpu_cores']} | "
                         f"{p['loadgen_cpu_cores']} | {p.get('machine_cpu_busy', 0.0):.0%} | "
                         f"{p['worker_max_open_files']:,} | "
                         f"{p['mem_available_bytes'] / 2**30:.1f} | {p['load_average_1m']} |")
    lines += ["", "| server | chargers | MeterValues/s | CALL→CALLRESULT p50 / p99 ms | CALL→row p50 / p99 ms | "
              "rows stored / answered | errors | server CPU cores | load-generator CPU cores | machine CPU busy | "
              "load avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for side in (result["csms"], result["raw"]):
        s = side["steady"]
        row = s.get("call_row_ms")
        lines.append(f"| {side['server']} | {side['held']:,} | {s['rate_per_s']:,} | {s['call_result_ms']['p50']} / "
                     f"{s['call_result_ms']['p99']} | "
                     + (f"{row['p50']} / {row['p99']} | {s['rows_stored']:,} / {s['ok']:,}" if row else "– | –")
                     + f" | {s['errors'] + s['unanswered']} | {s['server_cpu_cores']} | {s['loadgen_cpu_cores']} | "
                       f"{s.get('machine_cpu_busy', 0.0):.0%} | {s['load_average_1m']} |")
    ours = result["csms"]
    lines += ["", f"Largest fleet held: {ours['held']:,} of {result['target']:,}"
              + (f"; the climb stopped because it ran out of: {ours['ran_out']}." if ours["ran_out"] else ".")]
    return "\n".join(lines)
