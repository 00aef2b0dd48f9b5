"""Helpers every benchmark shares: processes, the benchmark's database cluster, charger rows.

Everything runs on loopback. Servers under test are separate processes so that their CPU
time and resident memory can be read from ``/proc`` without counting the load generator.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
from argon2 import PasswordHasher

from csms.run.embedded_pg import EmbeddedPostgres
from csms.run.ports import free_port
from csms.security.credentials import hash_password
from schemas.migrate import apply_migrations

PASSWORD = "bench-password-0123456789"  # noqa: S105 - a throw-away benchmark cluster
# Stand-ins for thousands of distinct charger addresses: the server's per-source handshake
# limits (csms/gateway/handshake.py) would otherwise throttle the few 127.0.0.x sources a load
# generator has. Every report says the limits were raised.
# A few 127.0.0.x source addresses stand in for many chargers, so every per-source bound is lifted.
UNLIMITED_HANDSHAKES = ["--handshake-rate-per-source-per-s", "1000000", "--handshake-burst-per-source", "1000000",
                        "--kdf-queue-max-per-source", "1000000", "--kdf-queue-max", "1000000",
                        "--auth-failures-per-source-per-min", "1000000", "--auth-failures-per-id-per-min", "1000000"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape(http_port: int, names: Sequence[str], timeout_s: float = 10.0) -> dict[str, float]:
    """Unlabelled sample values (summed over labels) of the named metrics from a role's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))])


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout_s: float = 60.0) -> None:
    """Wait until something accepts on 127.0.0.1:port (or the process exits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Mosquitto with the settings of deploy/mosquitto (no queue cap, TCP_NODELAY)."""
    port = free_port()
    conf = folder / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "max_inflight_messages 1000\npersistence false\nset_tcp_nodelay true\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, timeout_s=20)
    return proc, f"mqtt://127.0.0.1:{port}"


def rollup_once(database_url: str, *, now: datetime | None = None) -> dict[str, Any]:
    """One refresh of the ingest side's roll-up, as its own process (``csms`` never imports
    ``ingest``): its figures, ``ran`` false when another refresher held the lock."""
    cmd = [sys.executable, "-m", "ingest.rollup", "--database-url", database_url]
    done = subprocess.run([*cmd, "--now", now.isoformat()] if now else cmd, capture_output=True, text=True,
                          check=False)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"the roll-up failed (exit {done.returncode}): {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def csms_serve(*, database_url: str, port: int, data_dir: Path, log: IO[bytes] | None = None,
               mqtt_url: str | None = None, extra: Sequence[str] = (), cpu: int | None = None,
               http_port: int | None = None) -> subprocess.Popen[bytes]:
    """``csms serve`` as the server under test (handshake limits raised, see UNLIMITED_HANDSHAKES)."""
    cmd = [sys.executable, "-m", "csms", "serve", "--database-url", database_url, "--ocpp-host", "127.0.0.1",
           "--ocpp-port", str(port), "--http-port", str(http_port or free_port()), "--log-level", "WARNING",
           "--data-dir", str(data_dir), "--node-id", f"bench-{port}", *UNLIMITED_HANDSHAKES, *extra]
    if mqtt_url:
        cmd += ["--mqtt-url", mqtt_url]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL,
                            preexec_fn=(lambda: pin(cpu)) if cpu is not None else None)


def csms_ingest(*, database_url: str, mqtt_url: str, data_dir: Path, log: IO[bytes] | None = None,
                http_port: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "csms", "ingest", "--database-url", database_url,
                             "--mqtt-url", mqtt_url, "--http-port", str(http_port or free_port()),
                             "--node-id", "bench-ingest",
                             "--log-level", "WARNING", "--data-dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)


def raw_server(kind: str, port: int, *, deflate: str = "none", cpu: int | None = None,
               reuse_port: bool = False) -> subprocess.Popen[bytes]:
    """A baseline server from ``csms.bench.servers`` (``echo`` or ``ocpp-lib``); ``reuse_port``: one of
    several echo processes sharing the port (SO_REUSEPORT), like the workers of ``--workers N``."""
    return subprocess.Popen([sys.executable, "-m", "csms.bench.servers", kind, str(port), deflate,
                             *(["reuse"] if reuse_port else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: pin(cpu)) if cpu is not None else None)


class BenchCluster:
    """One private PostgreSQL+TimescaleDB for the whole suite; a fresh database per benchmark.

    ``track_commit_timestamp`` is on so that the commit time of every stored row can be read
    back (``pg_xact_commit_timestamp(xmin)``): that is how CALL→row committed is measured.
    """

    def __init__(self, folder: Path) -> None:
        self._pg = EmbeddedPostgres(data_dir=folder / "pg", port=free_port(),
                                    extra_conf={"track_commit_timestamp": "on", "max_connections": "200"})
        self.admin_url = ""
        self._count = 0

    def start(self) -> None:
        state = self._pg.start()
        self.admin_url = state.url().rsplit("/", 1)[0] + "/postgres"

    def stop(self) -> None:
        self._pg.stop()

    async def new_database(self, name: str) -> str:
        """A new database with every migration applied; its URL."""
        self._count += 1
        db = f"bench_{self._count}_{''.join(c for c in name if c.isalnum())}"[:60]
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{db}"')
        finally:
            await conn.close()
        url = self.admin_url.rsplit("/", 1)[0] + "/" + db
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        return url


def production_hash(password: str = PASSWORD) -> str:
    """An Argon2id hash with the production parameters (csms.security.credentials)."""
    return hash_password(password)


def cheap_hash(password: str = PASSWORD) -> str:
    """An Argon2id hash with minimal cost parameters.

    The verifier reads the parameters from the stored hash, so chargers registered with this
    hash take the whole authentication path (Basic auth, hash check, verified cache) without
    paying 18 ms of KDF per first handshake. Used where memory or latency, not the KDF, is
    measured; the reconnect storm uses production_hash.
    """
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password)


async def register_chargers(database_url: str, ids: Sequence[str], credential_hash: str | None) -> None:
    """Register chargers (one EVSE with one connector each) in bulk, all with one credential hash."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO charge_points (id, credential_hash, security_profile, admission) "
                "VALUES ($1, $2, 1, 'accept') ON CONFLICT (id) DO NOTHING",
                [(i, credential_hash) for i in ids])
            await conn.executemany(
                "INSERT INTO evses (charge_point_id, evse_id, uid) VALUES ($1, 1, $2) ON CONFLICT DO NOTHING",
                [(i, f"{i}*1"[:36]) for i in ids])
            await conn.executemany(
                "INSERT INTO connectors (charge_point_id, evse_id, connector_id, standard, format, power_type, "
                "max_voltage_v, max_amperage_a, rated_power_w) "
                "VALUES ($1, 1, 1, 'IEC_62196_T2', 'SOCKET', 'AC_3_PHASE', 400, 32, 22000) ON CONFLICT DO NOTHING",
                [(i,) for i in ids])
    finally:
        await conn.close()


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """A list of started processes, each stopped (in reverse order) on the way out."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop_process(proc)
