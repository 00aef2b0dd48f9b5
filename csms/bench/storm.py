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
    csms_serve,
    production_hash,
    raw_server,
    register_chargers,
    stop_process,
    wait_port,
)
from csms.bench.fleet import ClientFleet
from csms.run.embedded_pg import free_port
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
                 source_offset: int, timeout_s: float, credential: str = "argon2id") -> dict[str, Any]:
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


async def run(*, cluster: BenchCluster, tmp: Path, chargers: int, per_process: int = 2500,
              timeout_s: float = 300.0) -> dict[str, Any]:
    # "csms": generated passwords (HMAC), the default; "csms-argon2id": every charger on a slow hash, as before
    # HMAC credentials (operator-chosen passwords, or not yet migrated), for comparison.
    variants = {"raw": ("raw", "argon2id"), "csms": ("csms", "hmac"), "csms-argon2id": ("csms", "argon2id")}
    runs = {name: await _storm(server, chargers, cluster=cluster, tmp=tmp, per_process=per_process,
                               source_offset=80 + i * 8, timeout_s=timeout_s, credential=credential)
            for i, (name, (server, credential)) in enumerate(variants.items())}
    return {"benchmark": "reconnect_storm", "chargers": chargers, "retry_delay_s": [0.25, 0.75], "runs": runs}


def render(result: dict[str, Any]) -> str:
    lines = ["| server | storm | chargers booted again | median s | all booted s | failed attempts | "
             "server CPU-s |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"].values():
        for storm in ("drop", "restart"):
            s = r[storm]
            extra = f" (listening after {s['listening_after_s']} s)" if storm == "restart" else ""
            lines.append(f"| {r['server']} | {storm}{extra} | {s['booted']:,} / {r['chargers']:,} | {s['p50_s']} | "
                         f"{s['all_s']} | {s['connect_failures']:,} | {s['server_cpu_s']} |")
    return "\n".join(lines)
