"""Reconnect storms: N connected, booted chargers lose their connections at once.

Two storms, each timed from the moment the connections go until every charger has
connected, been authenticated and had its BootNotification accepted again (chargers here
boot on every reconnect, the worst case; each retries a failed attempt after 0.25–0.75 s,
far more aggressive than real chargers' back-off, so the server is the limit):

* ``drop``: every charger's TCP connection is aborted (no closing handshake, as when a
  cellular network or NAT drops them) and all reconnect at once; the server keeps running,
  so its verified-credential cache is warm;
* ``restart``: the server is stopped (SIGTERM: it closes every charger with 1001) and started
  again; the new process has an empty cache. Run twice: with every credential an Argon2id hash
  at the production cost (csms.security.credentials; every charger pays one check, as with
  operator-chosen passwords or before HMAC credentials), and with every credential an HMAC of a
  generated password (csms.security.secret; microseconds per check). The server's stop and
  start-up time are included.

With ``workers`` > 1 (issue 13) the server is ``csms serve --workers N`` (a supervisor, N
gateway processes on one port with SO_REUSEPORT, a private Mosquitto as their bus) and the restart
is every worker SIGKILLed at once (a crash of all of them, no closing handshake); the supervisor
starts them again (the drop storm is not run then, to bound the suite). The raw baseline is then
N echo processes sharing the port, all killed and started again. Argon2id-only credentials cost
~20 ms of KDF per charger and process: that variant runs with ``argon2id_chargers`` (fewer, to
bound the run) and its rate is reported.

The same storms against a raw websockets server (no authentication, no database) are the
baseline. The server's per-source handshake limits are raised for the benchmark (the
fleet's few 127.0.0.x source addresses stand in for thousands of distinct chargers).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
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
    production_hash,
    raw_server,
    register_chargers,
    start_mosquitto,
    stop_process,
    wait_port,
)
from csms.bench.fleet import ClientFleet
from csms.bench.workers import ServerGroup
from csms.run.ports import free_port
from csms.security.secret import CredentialKey


def _write_secret(data_dir: Path) -> CredentialKey:
    """The server's credential secret, where `csms serve --data-dir` finds it (0600)."""
    secret = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "credential-secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return CredentialKey.from_secret(secret)


async def _store_restart_credentials(url: str, prefix: str, ids: list[str], credential: str, data_dir: Path) -> None:
    """Before the restart: every charger's credential as ``credential`` says (argon2id or hmac)."""
    conn = await asyncpg.connect(url)
    try:
        if credential == "argon2id":
            await conn.execute("UPDATE charge_points SET credential_hash = $1 WHERE id LIKE $2",
                               production_hash(), prefix + "%")
            return
        key = _write_secret(data_dir)
        await conn.execute("UPDATE charge_points cp SET credential_hash = m.h, credential_origin = 'generated' "
                           "FROM unnest($1::text[], $2::text[]) AS m(id, h) WHERE cp.id = m.id",
                           ids, [key.digest(i, PASSWORD) for i in ids])
        await conn.execute("INSERT INTO credential_keys (key_id, claimed_by) VALUES ($1, 'bench') "
                           "ON CONFLICT DO NOTHING", key.key_id)
    finally:
        await conn.close()


async def _storm(server: str, chargers: int, *, cluster: BenchCluster, tmp: Path, per_process: int,
                 source_offset: int, timeout_s: float, credential: str = "argon2id", workers: int = 1
                 ) -> dict[str, Any]:
    if workers > 1:
        return await _worker_storm(server, chargers, cluster=cluster, tmp=tmp, per_process=per_process,
                                   source_offset=source_offset, timeout_s=timeout_s, credential=credential,
                                   workers=workers)
    port = free_port()
    prefix = f"S{server[0].upper()}{credential[0].upper() if server == 'csms' else ''}"
    ids = [f"{prefix}{i}" for i in range(chargers)]
    url: str | None = None
    log = (tmp / f"server-{prefix}.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        if url is None:
            return raw_server("echo", port)
        return csms_serve(database_url=url, port=port, data_dir=tmp / f"state-{prefix}", log=log)

    if server == "csms":
        url = await cluster.new_database("storm" + credential)
        # Cheap hashes while the fleet first connects; the credentials under test before the restart (below).
        await register_chargers(url, ids, cheap_hash())
    proc = start()
    fleet = ClientFleet(url=f"ws://127.0.0.1:{port}/ocpp", prefix=prefix, log_dir=tmp,
                        password=PASSWORD if url else None, per_process=per_process, source_offset=source_offset,
                        ready_timeout_s=timeout_s)
    try:
        wait_port(port, proc)
        initial = await fleet.grow(chargers)
        # drop: the server keeps running
        cpu0 = cpu_seconds(proc.pid)
        t0 = await fleet.drop()
        drop = await fleet.wait_booted(t0, timeout_s)
        drop["server_cpu_s"] = round(cpu_seconds(proc.pid) - cpu0, 2)
        drop["connect_failures"] -= initial["connect_failures"]
        if url is not None:
            await _store_restart_credentials(url, prefix, ids, credential, tmp / f"state-{prefix}")
        # restart: stop the server, start a new process
        t0 = time.time()
        await asyncio.to_thread(stop_process, proc)
        stopped = time.time()
        proc = start()
        await asyncio.to_thread(wait_port, port, proc)
        listening = time.time()
        restart = await fleet.wait_booted(t0, timeout_s)
        restart["connect_failures"] -= drop["connect_failures"] + initial["connect_failures"]
        restart["server_cpu_s"] = round(cpu_seconds(proc.pid), 2)
        restart["stop_s"] = round(stopped - t0, 3)
        restart["listening_after_s"] = round(listening - t0, 3)
    finally:
        await fleet.close()
        stop_process(proc)
        log.close()
    name = server if server == "raw" else f"{server} ({credential})"
    return {"server": name, "chargers": chargers, "initial_booted": initial["booted"],
            "initial_connect_s": initial["connect_s"], "drop": drop, "restart": restart}


async def _worker_storm(server: str, chargers: int, *, cluster: BenchCluster, tmp: Path, per_process: int,
                        source_offset: int, timeout_s: float, credential: str, workers: int) -> dict[str, Any]:
    """The storms against N processes on one port; the restart kills every worker at once."""
    port = free_port()
    prefix = f"Q{server[0].upper()}{credential[0].upper() if server == 'csms' else ''}"
    ids = [f"{prefix}{i}" for i in range(chargers)]
    url: str | None = None
    helpers: list[subprocess.Popen[bytes]] = []
    with (tmp / f"server-{prefix}.log").open("ab") as log:
        if server == "csms":
            url = await cluster.new_database("wstorm" + credential)
            await register_chargers(url, ids, cheap_hash())
            # The workers' bus, and the ingest worker that confirms their outboxes (without it every
            # worker would send its whole outbox again every minute).
            broker, mqtt_url = start_mosquitto(tmp)
            helpers = [broker, csms_ingest(database_url=url, mqtt_url=mqtt_url, data_dir=tmp / f"ingest-{prefix}",
                                           log=log)]
            group = ServerGroup("csms", port, workers, database_url=url, mqtt_url=mqtt_url,
                                data_dir=tmp / f"state-{prefix}", log=log)
        else:
            group = ServerGroup("raw", port, workers)
        fleet = ClientFleet(url=f"ws://127.0.0.1:{port}/ocpp", prefix=prefix, log_dir=tmp,
                            password=PASSWORD if url else None, per_process=per_process,
                            source_offset=source_offset, ready_timeout_s=timeout_s)
        try:
            await asyncio.to_thread(group.start)
            initial = await fleet.grow(chargers)
            # The restart storm only (issue 13's); the drop storm runs with one server process (workers = 1).
            if url is not None:
                await _store_restart_credentials(url, prefix, ids, credential, tmp / f"state-{prefix}")
            t0 = time.time()
            await asyncio.to_thread(group.kill_all)
            stopped = time.time()
            if server != "csms":
                group.restart_raw()
            await asyncio.to_thread(group.wait_ready, 120.0)
            listening = time.time()
            restart = await fleet.wait_booted(t0, timeout_s)
            restart["connect_failures"] -= initial["connect_failures"]
            restart["server_cpu_s"] = round(group.cpu_seconds(), 2)
            restart["stop_s"] = round(stopped - t0, 3)
            restart["listening_after_s"] = round(listening - t0, 3)
            # Boots per second once the port accepts again (the KDF-bound rate of the Argon2id variant).
            window = (timeout_s if restart["missing"] else restart["all_s"] or 0.0) - restart["listening_after_s"]
            restart["boots_per_s"] = round(restart["booted"] / max(window, 1e-3), 1)
        finally:
            await fleet.close()
            await asyncio.to_thread(group.stop)
            for helper in reversed(helpers):
                stop_process(helper)
    name = f"raw × {workers}" if server == "raw" else f"csms --workers {workers} ({credential})"
    return {"server": name, "chargers": chargers, "workers": workers, "initial_booted": initial["booted"],
            "initial_connect_s": initial["connect_s"], "restart": restart}


async def run(*, cluster: BenchCluster, tmp: Path, chargers: int, per_process: int = 2500,
              timeout_s: float = 300.0, workers: int = 1, argon2id_chargers: int | None = None,
              argon2id_timeout_s: float | None = None) -> dict[str, Any]:
    # "csms": generated passwords (HMAC), the default; "csms-argon2id": every charger on a slow hash, as before
    # HMAC credentials (operator-chosen passwords, or not yet migrated), for comparison.
    variants = {"raw": ("raw", "argon2id"), "csms": ("csms", "hmac"), "csms-argon2id": ("csms", "argon2id")}
    slow = argon2id_chargers or chargers
    runs = {name: await _storm(server, slow if name == "csms-argon2id" else chargers, cluster=cluster, tmp=tmp,
                               per_process=per_process, source_offset=80 + i * 10, credential=credential,
                               timeout_s=(argon2id_timeout_s or timeout_s) if name == "csms-argon2id" else timeout_s,
                               workers=workers)
            for i, (name, (server, credential)) in enumerate(variants.items())}
    return {"benchmark": "reconnect_storm", "chargers": chargers, "argon2id_chargers": slow, "workers": workers,
            "retry_delay_s": [0.25, 0.75], "runs": runs}


def render(result: dict[str, Any]) -> str:
    lines = ["| server | storm | chargers booted again | median s | all booted s | failed attempts | "
             "server CPU-s |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"].values():
        for storm in ("drop", "restart"):
            if storm not in r:
                continue
            s = r[storm]
            extra = f" (listening after {s['listening_after_s']} s)" if storm == "restart" else ""
            lines.append(f"| {r['server']} | {storm}{extra} | {s['booted']:,} / {r['chargers']:,} | {s['p50_s']} | "
                         f"{s['all_s']} | {s['connect_failures']:,} | {s['server_cpu_s']} |")
    if result.get("argon2id_chargers", result["chargers"]) != result["chargers"]:
        slow = result["runs"]["csms-argon2id"]["restart"]
        lines += ["", f"The Argon2id-only variant ran with {result['argon2id_chargers']:,} chargers (not "
                  f"{result['chargers']:,}) to bound the run: {slow.get('boots_per_s', '–')} boots/s after the "
                  f"restart (once listening), so {result['chargers']:,} would take about "
                  f"{_extrapolated_s(result):,.0f} s at that rate."]
    return "\n".join(lines)


def _extrapolated_s(result: dict[str, Any]) -> float:
    """Seconds the Argon2id-only restart would take for the full fleet at its measured boot rate."""
    slow = result["runs"]["csms-argon2id"]["restart"]
    rate = slow.get("boots_per_s") or 0.0
    return slow["listening_after_s"] + result["chargers"] / rate if rate else 0.0
