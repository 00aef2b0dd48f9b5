"""Command latency: a command through the node holding the charger vs. through another node (issue 13).

Two ``csms serve`` nodes on one database and one Mosquitto; one charger on node B that answers every
CALL at once. ``count`` ClearCache commands go through B's API (local: B writes the CALL to the socket)
and ``count`` through A's API (cross-node: A looks the charger up in the fleet registry and sends the
command over the broker to B, which sends it and publishes the reply), alternating, one at a time, in
the same run. The figure is each path's HTTP round trip (p50/p99) and the difference of the two.

    python -m csms.bench.commands [--count 300]     # prints one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets

from csms.bench.common import (
    PASSWORD,
    BenchCluster,
    cheap_hash,
    csms_serve,
    percentile,
    processes,
    register_chargers,
    start_mosquitto,
    wait_port,
)
from csms.run.ports import free_port

TOKEN = "bench-operator-token-0123456789"  # noqa: S105 - a throw-away benchmark cluster
CHARGER = "BENCH-CMD-1"


async def _answering_charger(url: str, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """Answer every CSMS CALL at once with ``{"status": "Accepted"}``."""
    async with websockets.connect(f"{url}/{CHARGER}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers={"Authorization": "Basic " + base64.b64encode(
                                      f"{CHARGER}:{PASSWORD}".encode()).decode()},
                                  ping_interval=None, compression=None) as ws:
        await ws.send(json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "B", "chargePointModel": "C"}]))
        await asyncio.wait_for(ws.recv(), 30)
        ready.set()
        reader = asyncio.ensure_future(ws.recv())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    return
                msg = json.loads(reader.result())
                if msg[0] == 2:
                    await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                reader = asyncio.ensure_future(ws.recv())
        finally:
            reader.cancel()
            stopping.cancel()


async def _wait_listed(api: httpx.AsyncClient, node: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            listed = (await api.get("/api/v1/connections")).json()
            if any(c["charge_point_id"] == CHARGER and c["node_id"] == node for c in listed):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{CHARGER} never listed on node {node}")


def _summary(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {"p50_ms": round(percentile(ordered, 0.50) * 1000, 3), "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else 0.0}


@contextlib.asynccontextmanager
async def _nodes(cluster: BenchCluster, folder: Path) -> AsyncIterator[tuple[str, str, str]]:
    """Nodes A and B on a fresh database and a private broker; (A's API, B's API, B's OCPP url)."""
    db = await cluster.new_database("commands")
    await register_chargers(db, [CHARGER], cheap_hash())
    with processes() as procs:
        broker, mqtt_url = start_mosquitto(folder)
        procs.append(broker)
        ports = {}
        for name in ("a", "b"):
            ocpp, http = free_port(), free_port()
            procs.append(csms_serve(database_url=db, port=ocpp, http_port=http, data_dir=folder / name,
                                    mqtt_url=mqtt_url, extra=["--api-token", TOKEN, "--node-id", f"bench-{name}"]))
            ports[name] = (ocpp, http)
        for name, (_, http) in ports.items():
            await asyncio.to_thread(wait_port, http, procs[-1 if name == "b" else -2])
        yield (f"http://127.0.0.1:{ports['a'][1]}", f"http://127.0.0.1:{ports['b'][1]}",
               f"ws://127.0.0.1:{ports['b'][0]}/ocpp")


async def run(count: int = 300, *, cluster: BenchCluster | None = None, folder: Path | None = None
              ) -> dict[str, Any]:
    """``count`` local and ``count`` cross-node commands, alternating; their latencies. ``cluster``: the
    suite's database cluster (a private one otherwise); ``folder``: where the processes keep their state."""
    own = folder is None
    work = folder or Path(tempfile.mkdtemp(prefix="csms-bench-commands-"))
    work.chmod(0o755)   # the embedded PostgreSQL may run as another user (root → postgres)
    private = cluster is None
    db_cluster = cluster or BenchCluster(work)
    try:
        if private:
            await asyncio.to_thread(db_cluster.start)
        return await _measure(db_cluster, work, count)
    finally:
        if private:
            await asyncio.to_thread(db_cluster.stop)
        if own:
            shutil.rmtree(work, ignore_errors=True)


async def _measure(cluster: BenchCluster, folder: Path, count: int) -> dict[str, Any]:
    async with _nodes(cluster, folder) as (api_a, api_b, ws_b):
        ready, stop = asyncio.Event(), asyncio.Event()
        charger = asyncio.create_task(_answering_charger(ws_b, ready, stop))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            await asyncio.wait_for(ready.wait(), 60)
            async with httpx.AsyncClient(base_url=api_a, headers=headers, timeout=60) as a, \
                    httpx.AsyncClient(base_url=api_b, headers=headers, timeout=60) as b:
                await _wait_listed(a, "bench-b")
                latencies: dict[str, list[float]] = {"local": [], "cross_node": []}
                failures = 0
                for i in range(2 * count + 20):   # the first 20 warm both paths up, not counted
                    path, client = ("local", b) if i % 2 == 0 else ("cross_node", a)
                    started = time.perf_counter()
                    reply = await client.post(f"/api/v1/charge-points/{CHARGER}/ocpp/ClearCache", json={})
                    elapsed = time.perf_counter() - started
                    if reply.status_code != 200:
                        failures += 1
                    elif i >= 20:
                        latencies[path].append(elapsed)
        finally:
            stop.set()
            await asyncio.wait({charger}, timeout=10)
    local, remote = _summary(latencies["local"]), _summary(latencies["cross_node"])
    return {"count": count, "failures": failures, "local": local, "cross_node": remote,
            "added_p50_ms": round(remote["p50_ms"] - local["p50_ms"], 3),
            "added_p99_ms": round(remote["p99_ms"] - local["p99_ms"], 3)}


def render(result: dict[str, Any]) -> str:
    lines = ["| path | commands | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for key, name in (("local", "local: API of the node holding the charger"),
                      ("cross_node", "cross-node: API of another node, over the broker")):
        r = result[key]
        lines.append(f"| {name} | {result['count']:,} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    lines += ["", f"Added by the broker hop: {result['added_p50_ms']} ms at p50, {result['added_p99_ms']} ms at p99; "
              f"{result['failures']} failed."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csms.bench.commands", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="commands per path (bounded: 1..10000)")
    args = parser.parse_args(argv)
    count = max(1, min(args.count, 10000))
    print(json.dumps(asyncio.run(run(count)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
