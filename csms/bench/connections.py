"""Chargers held by one server process and resident memory per connection, next to raw websockets.

One series per server and compression: the server starts, chargers are added in steps
(each connects, boots and reports its connector status, then idles), and after each step
the server's resident set size is read from /proc. Series:

* ``csms``: ``csms serve`` (in-process bus), Basic auth on, every charger registered;
* ``raw``: a plain websockets server (``csms.bench.servers echo``) holding the same connections;

each with permessage-deflate negotiated (the server's reduced windows, the same for both)
and without (the client offers no extension). One more raw series shows what the same
windows cost without context takeover (``server_no_context_takeover`` and
``client_no_context_takeover``: zlib state only while a message is being (de)compressed),
the setting that would bring an idle deflate connection down to the uncompressed cost.
Per-connection memory is the growth of RSS
from the idle server to the largest step, divided by the connections held; the marginal
figure (between the smallest and largest step) leaves out one-off start-up allocations.

Charger credentials carry a low-cost Argon2id hash (see ``common.cheap_hash``): the KDF is
CPU per first handshake, not memory per connection, and is measured by the reconnect storm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csms.bench.common import (
    PASSWORD,
    BenchCluster,
    cheap_hash,
    csms_serve,
    raw_server,
    register_chargers,
    rss_bytes,
    stop_process,
    wait_port,
)
from csms.bench.fleet import ClientFleet
from csms.gateway.server import DEFLATE_MEM_LEVEL, DEFLATE_WINDOW_BITS
from csms.run.ports import free_port

KIB = 1024
SETTLE_S = 1.0


# (server, deflate): "off" (the client offers no extension), "on" (the gateway's reduced windows),
# "on-nct" (the same windows without context takeover; raw server only, a what-if).
SERIES: tuple[tuple[str, str], ...] = (("csms", "on"), ("raw", "on"), ("raw", "on-nct"), ("csms", "off"),
                                       ("raw", "off"))
RAW_DEFLATE = {"off": "none", "on": f"{DEFLATE_WINDOW_BITS}:{DEFLATE_MEM_LEVEL}",
               "on-nct": f"{DEFLATE_WINDOW_BITS}:{DEFLATE_MEM_LEVEL}:nct",
               "on-snct": f"{DEFLATE_WINDOW_BITS}:{DEFLATE_MEM_LEVEL}:snct"}


async def _series(server: str, deflate_mode: str, steps: Sequence[int], *, cluster: BenchCluster, tmp: Path,
                  per_process: int, source_offset: int, ready_timeout_s: float) -> dict[str, Any]:
    port = free_port()
    deflate = deflate_mode != "off"
    prefix = f"H{server[0].upper()}{deflate_mode.replace('-', '').upper()}"
    if server == "csms":
        url = await cluster.new_database(f"hold_{prefix}")
        await register_chargers(url, [f"{prefix}{i}" for i in range(max(steps))], cheap_hash())
        with (tmp / f"server-{prefix}.log").open("ab") as log:
            proc = csms_serve(database_url=url, port=port, data_dir=tmp / f"state-{prefix}", log=log)
    else:
        proc = raw_server("echo", port, deflate=RAW_DEFLATE[deflate_mode])
    fleet = ClientFleet(url=f"ws://127.0.0.1:{port}/ocpp", prefix=prefix, log_dir=tmp,
                        password=PASSWORD if server == "csms" else None, deflate=deflate, per_process=per_process,
                        source_offset=source_offset, ready_timeout_s=ready_timeout_s)
    points: list[dict[str, Any]] = []
    try:
        wait_port(port, proc)
        await asyncio.sleep(SETTLE_S)
        idle_rss = rss_bytes(proc.pid)
        for n in steps:
            started = time.monotonic()
            grown = await fleet.grow(n - fleet.total)
            await asyncio.sleep(SETTLE_S)
            held = (points[-1]["connections"] if points else 0) + grown["booted"]
            points.append({"connections": held, "rss_bytes": rss_bytes(proc.pid),
                           "deflate_negotiated": (points[-1]["deflate_negotiated"] if points else 0)
                           + grown["deflate_negotiated"],
                           "missing": grown["missing"], "seconds": round(time.monotonic() - started, 2),
                           "errors": grown["errors"]})
    finally:
        await fleet.close()
        stop_process(proc)
    last, first = points[-1], points[0]
    held = last["connections"]
    per_conn = (last["rss_bytes"] - idle_rss) / held if held else 0.0
    span = last["connections"] - first["connections"]
    marginal = (last["rss_bytes"] - first["rss_bytes"]) / span if span > 0 else per_conn
    return {"server": server, "deflate": deflate_mode, "idle_rss_bytes": idle_rss, "points": points,
            "max_connections": held, "rss_per_connection_kib": round(per_conn / KIB, 2),
            "marginal_rss_per_connection_kib": round(marginal / KIB, 2)}


async def run(*, cluster: BenchCluster, tmp: Path, steps: Sequence[int], per_process: int = 5000,
              ready_timeout_s: float = 300.0) -> dict[str, Any]:
    series = []
    for i, (server, deflate) in enumerate(SERIES):
        series.append(await _series(server, deflate, steps, cluster=cluster, tmp=tmp, per_process=per_process,
                                    source_offset=i * 8, ready_timeout_s=ready_timeout_s))
    return {"benchmark": "connections", "steps": list(steps),
            "deflate": f"permessage-deflate, {2 ** DEFLATE_WINDOW_BITS // KIB} KiB windows, memLevel "
                       f"{DEFLATE_MEM_LEVEL} (server side; the raw server negotiates the same)",
            "series": series}


DEFLATE_LABEL = {"off": "off", "on": "on", "on-nct": "on, no context takeover",
                 "on-snct": "on, server_no_context_takeover only"}


def render(result: dict[str, Any]) -> str:
    lines = ["| server | deflate | connections held | RSS idle → loaded (MiB) | KiB per connection | "
             "marginal KiB per connection | deflate negotiated |", "|---|---|---|---|---|---|---|"]
    for s in result["series"]:
        last = s["points"][-1]
        lines.append(f"| {s['server']} | {DEFLATE_LABEL[s['deflate']]} | {s['max_connections']:,} | "
                     f"{s['idle_rss_bytes'] / 2**20:.0f} → {last['rss_bytes'] / 2**20:.0f} | "
                     f"{s['rss_per_connection_kib']} | {s['marginal_rss_per_connection_kib']} | "
                     f"{last['deflate_negotiated']:,} |")
    return "\n".join(lines)
