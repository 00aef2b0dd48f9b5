"""The production topology on loopback: ``csms serve`` and ``csms ingest`` processes, a real
Mosquitto and TimescaleDB, with the faults the pipeline must survive."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx

from csms.run.ports import free_port
from csms.store.registry import ChargePointSpec, add_charge_point
from schemas.migrate import apply_migrations
from tests.central import PASSWORD


@dataclass
class Role:
    name: str
    args: list[str]
    workdir: Path
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "csms", *self.args, "--http-port", str(self.http_port),
                                          "--log-level", "INFO"], cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT, text=True)

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy:\n{self.log()}")

    def wait_log(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} never logged {text!r}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush — a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).text


def csms_serve(workdir: Path, db_url: str, mqtt_url: str, *, ocpp_port: int, node_id: str = "node-a",
               resend_after_s: float = 3.0) -> Role:
    return Role("serve-" + node_id, ["serve", "--database-url", db_url, "--mqtt-url", mqtt_url, "--ocpp-port",
                                     str(ocpp_port), "--ocpp-host", "127.0.0.1", "--node-id", node_id, "--data-dir",
                                     str(workdir / "state"), "--outbox-resend-after-s", str(resend_after_s),
                                     "--ping-interval-s", "0", "--handshake-burst-per-source", "100000",
                                     "--handshake-rate-per-source-per-s", "100000"], workdir)


def csms_ingest(workdir: Path, db_url: str, mqtt_url: str, *, node_id: str) -> Role:
    return Role("ingest-" + node_id, ["ingest", "--database-url", db_url, "--mqtt-url", mqtt_url, "--node-id",
                                      node_id, "--ingest-batch-max-delay-ms", "50"], workdir)


async def prepare(db_url: str, charger_ids: list[str]) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    try:
        for cp in charger_ids:
            await add_charge_point(pool, ChargePointSpec(id=cp, password=PASSWORD))
    finally:
        await pool.close()


async def stored_keys(db_url: str, charger_ids: list[str]) -> list[tuple[str, datetime, str, str]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT charge_point_id, time, measurand, phase FROM meter_samples "
                                "WHERE charge_point_id = ANY($1::text[])", charger_ids)
        return [(r["charge_point_id"], r["time"], r["measurand"], r["phase"]) for r in rows]
    finally:
        await conn.close()


async def wait_for_rows(db_url: str, charger_ids: list[str], expected: int, timeout_s: float = 90) -> int:
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        try:
            n = len(await stored_keys(db_url, charger_ids))
        except (OSError, asyncpg.PostgresError):
            n = 0
        if n >= expected:
            return n
        await asyncio.sleep(0.25)
    return n
