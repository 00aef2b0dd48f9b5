"""``csms run --workers 3``: one host, three gateway processes on shared ports, one supervisor.

Real processes throughout: the supervisor starts the embedded PostgreSQL, an embedded Mosquitto, one
``csms ingest`` and three workers; chargers are raw websockets. The tests check that chargers spread
over the workers (per-worker metrics ports), that the one API port answers for every charger whichever
worker holds it (fleet registry and commands over the broker), that a second connection of a charger
that lands on another worker replaces the first, that a SIGKILLed worker is restarted and its
chargers lose no sample, and that SIGTERM stops everything in order with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.central import PASSWORD
from tests.chargers import basic_auth
from tests.harness import MosquittoService, PostgresService, make_shared_tmpdir
from tests.pipeline import prepare, stored_keys, wait_for_rows
from tests.processes import CsmsProcess, start_csms
from tests.prometheus_harness import running_prometheus
from tests.replaying_charger import ReplayingCharger, expected_keys

pytestmark = pytest.mark.integration

WORKERS = 3
NODE = "wk"
SPREAD = [f"WK-S{i:02d}" for i in range(30)]
MOVER = "WK-MOVE"
KILLED = [f"WK-K{i:02d}" for i in range(30)]
SCRAPED = [f"WK-P{i:02d}" for i in range(30)]
SERVED = [f"WK-V{i:02d}" for i in range(12)]
RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules"
START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def free_port_block(n: int, attempts: int = 200) -> int:
    """The first of ``n`` consecutive free loopback ports (the per-worker metrics ports)."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 60000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no block of {n} free ports")


# --------------------------------------------------------------------------- a charger that answers


@dataclass(eq=False)
class AnsweringCharger:
    """A 1.6 charger on a raw websocket: boots, answers every CALL with Accepted, records how it ended."""

    url: str
    cp_id: str
    calls: Counter[str] = field(default_factory=Counter)
    close_code: int | None = None
    closed_at: float | None = None   # time.monotonic() when the client saw the close
    ws: Any = None
    _reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await websockets.connect(f"{self.url}/{self.cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                           additional_headers=basic_auth(self.cp_id, PASSWORD), open_timeout=20,
                                           ping_interval=None, close_timeout=5)
        await self.ws.send(json.dumps([2, "boot", "BootNotification",
                                       {"chargePointVendor": "Workers", "chargePointModel": "W1"}]))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 20))
        assert reply[0] == 3, reply
        assert reply[2]["status"] == "Accepted", reply
        self._reader = asyncio.create_task(self._read(), name=f"reader-{self.cp_id}")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame[0] == 2:
                    self.calls[frame[2]] += 1
                    await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = self.ws.close_code

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 10)


async def wait_until(predicate: Any, what: str, timeout_s: float = 60.0, every_s: float = 0.2) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


# --------------------------------------------------------------------------- the running system


@dataclass
class WorkerSystem:
    proc: CsmsProcess
    workdir: Path
    metrics_base: int
    db_url: str = ""
    token: str = ""

    @property
    def ws(self) -> str:
        return self.proc.ws

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.proc.http, headers={"Authorization": f"Bearer {self.token}"},
                                 timeout=30)

    async def worker_metric(self, index: int, name: str) -> float:
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{self.metrics_base + index}/metrics")).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    async def connected_per_worker(self) -> list[float]:
        return [await self.worker_metric(i, "csms_chargers_connected") for i in range(WORKERS)]

    def worker_pids(self) -> dict[str, int]:
        """The newest pid of each child, from the supervisor's "wN started (pid P)" lines."""
        return {m.group(1): int(m.group(2)) for m in re.finditer(r" (w\d+|ingest) started \(pid (\d+)\)",
                                                               self.proc.log())}

    async def connections(self) -> list[dict[str, Any]]:
        async with self.api() as http:
            response = await http.get("/api/v1/connections")
        assert response.status_code == 200, response.text
        return list(response.json())


def _db_url(workdir: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "csms", "db-url", "--data-dir", str(workdir / ".csms")],
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.strip()


@contextlib.asynccontextmanager
async def worker_system(chargers: list[str]) -> AsyncIterator[WorkerSystem]:
    workdir = make_shared_tmpdir("csms-workers-")
    base = free_port_block(WORKERS + 1)
    proc = start_csms(["run", "--workers", str(WORKERS), "--node-id", NODE, "--metrics-port-base", str(base),
                       "--data-dir", str(workdir / ".csms"), "--ping-interval-s", "0", "--log-level", "INFO",
                       "--handshake-burst-per-source", "100000", "--handshake-rate-per-source-per-s", "100000",
                       "--kdf-queue-max-per-source", "128", "--kdf-queue-max", "256",
                       "--outbox-resend-after-s", "3", "--worker-restart-backoff-min-s", "0.2",
                       "--call-timeout-s", "10"], workdir=workdir)
    system = WorkerSystem(proc=proc, workdir=workdir, metrics_base=base)
    try:
        await asyncio.to_thread(proc.wait_healthy, 120)
        await wait_until(lambda: "all 3 workers ready" in proc.log(), "workers ready", 120)
        system.db_url = await asyncio.to_thread(_db_url, workdir)
        system.token = (workdir / ".csms" / "api-token").read_text().strip()
        await prepare(system.db_url, chargers)
        yield system
    finally:
        try:
            rc = await asyncio.to_thread(proc.stop, signal.SIGTERM, 120)
            log = proc.log()
            assert rc == 0, log[-6000:]
            # Stopped in order: every worker before ingest, ingest before the broker, the broker before
            # the database (the supervisor's own lines come after each step).
            assert "stopped" in log.splitlines()[-1], log[-3000:]
            for pid in system.worker_pids().values():
                assert not _alive(pid), f"child {pid} outlived the supervisor"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to be reaped counts as gone)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


# --------------------------------------------------------------------------- tests


async def test_chargers_spread_over_the_workers_and_one_api_port_reaches_each() -> None:
    async with worker_system(SPREAD) as system:
        fleet = [AnsweringCharger(system.ws, cp) for cp in SPREAD]
        try:
            await asyncio.gather(*(c.connect() for c in fleet))
            per_worker = await wait_until(
                lambda: _if_total(system.connected_per_worker(), len(fleet)), "30 connected over the workers")
            # SO_REUSEPORT hashes each connection's addresses: with 30 connections a worker left empty
            # has a probability of 3·(2/3)^30 ≈ 2e-5.
            assert all(n > 0 for n in per_worker), per_worker

            # The one API port, whichever worker takes the request, lists all 30 (fleet registry)…
            for _ in range(6):
                listed = await system.connections()
                assert sorted(c["charge_point_id"] for c in listed) == sorted(SPREAD), listed
            nodes = {c["node_id"] for c in listed}
            assert nodes == {f"{NODE}-w{i}" for i in range(WORKERS)}, nodes

            # … and a command through it reaches each charger once (over the broker when another
            # worker holds it).
            async with system.api() as http:
                for c in fleet:
                    response = await http.post(f"/api/v1/charge-points/{c.cp_id}/ocpp/TriggerMessage",
                                               json={"requestedMessage": "Heartbeat"})
                    assert response.status_code == 200, (c.cp_id, response.text)
                    assert response.json()["response"] == {"status": "Accepted"}
            assert all(c.calls["TriggerMessage"] == 1 for c in fleet), {c.cp_id: dict(c.calls) for c in fleet}
        finally:
            await asyncio.gather(*(c.close() for c in fleet))


async def _if_total(per_worker: Any, total: int) -> list[float] | None:
    values = list(await per_worker)
    return values if sum(values) == total else None


async def test_the_same_charger_connecting_again_on_another_worker_replaces_the_old_socket() -> None:
    async with worker_system([MOVER]) as system:
        first = AnsweringCharger(system.ws, MOVER)
        await first.connect()
        entry = await wait_until(lambda: _entry(system, MOVER), "the first connection listed")
        holder, current, epoch = entry["node_id"], first, entry["connection_epoch"]
        sockets = [first]
        try:
            # Connect again until the kernel hands the new socket to another worker (each attempt that
            # lands on the same worker replaces the previous socket there: try again from that one).
            for _attempt in range(40):
                nxt = AnsweringCharger(system.ws, MOVER)
                await nxt.connect()
                sockets.append(nxt)
                entry = await wait_until(lambda e=epoch: _entry(system, MOVER, newer_than=e), "the new connection")
                await wait_until(lambda c=current: c.closed, "the replaced socket closed by the server", 30)
                moved = entry["node_id"] != holder
                current, epoch = nxt, entry["connection_epoch"]
                if moved:
                    break
                holder = entry["node_id"]
            else:
                raise AssertionError("40 connections in a row landed on the same worker")
            # One entry left, on the new worker, and the charger is reachable there.
            listed = await wait_until(lambda: _only(system, MOVER, entry["node_id"]), "one entry left", 30)
            assert len(listed) == 1, listed
            async with system.api() as http:
                response = await http.post(f"/api/v1/charge-points/{MOVER}/ocpp/TriggerMessage",
                                           json={"requestedMessage": "Heartbeat"})
            assert response.status_code == 200, response.text
            assert current.calls["TriggerMessage"] == 1
            assert all(s.closed for s in sockets if s is not current)
            assert not current.closed
        finally:
            await asyncio.gather(*(s.close() for s in sockets))


async def _entry(system: WorkerSystem, cp_id: str, newer_than: int | None = None) -> dict[str, Any] | None:
    for c in await system.connections():
        if c["charge_point_id"] == cp_id and (newer_than is None or (c["connection_epoch"] or 0) > newer_than):
            return c
    return None


async def _only(system: WorkerSystem, cp_id: str, node: str) -> list[dict[str, Any]] | None:
    mine = [c for c in await system.connections() if c["charge_point_id"] == cp_id]
    return mine if len(mine) == 1 and mine[0]["node_id"] == node else None


async def test_a_killed_worker_is_restarted_and_its_chargers_lose_no_sample() -> None:
    async with worker_system(KILLED) as system:
        fleet = [ReplayingCharger(url=system.ws, cp_id=cp, password=PASSWORD, start=START + timedelta(days=i),
                                  count=60, pace_s=0.05) for i, cp in enumerate(KILLED)]
        drive = asyncio.gather(*(c.run(deadline_s=240) for c in fleet))
        try:
            await wait_until(lambda: sum(c.answered for c in fleet) >= 0.3 * 60 * len(fleet), "30% answered", 120,
                             every_s=0.05)
            per_worker = await system.connected_per_worker()
            victim = max(range(WORKERS), key=lambda i: per_worker[i])
            name = f"w{victim}"
            old_pid = system.worker_pids()[name]
            os.kill(old_pid, signal.SIGKILL)
            await wait_until(lambda: f"{name} (pid {old_pid}) was killed by SIGKILL" in system.proc.log(),
                             "the supervisor saw the crash", 30)
            await wait_until(lambda: system.worker_pids()[name] != old_pid, "the worker restarted", 60)
            async with httpx.AsyncClient(timeout=5) as http:
                await wait_until(lambda: _healthy(http, system.metrics_base + victim), "the new worker healthy", 90)
            await asyncio.wait_for(drive, 300)
        except BaseException:
            drive.cancel()
            with contextlib.suppress(BaseException):
                await drive
            raise
        assert sum(c.reconnects for c in fleet) > 0  # the victim's chargers had to reconnect
        want: set[tuple[str, datetime, str, str]] = set()
        for c in fleet:
            want |= expected_keys(c.cp_id, c.start, c.count)
        got_n = await wait_for_rows(system.db_url, KILLED, len(want), timeout_s=120)
        got = Counter(await stored_keys(system.db_url, KILLED))
        assert got_n == len(want), f"{got_n} of {len(want)} samples stored\n{system.proc.log()[-4000:]}"
        assert got == Counter(want)  # every sample once: none lost with the killed worker, none doubled


async def _healthy(http: httpx.AsyncClient, port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    return False


async def test_prometheus_scrapes_every_worker_and_sums_their_chargers() -> None:
    """Item 9, option (a): one metrics port per worker. Prometheus lists each worker as a target; the
    workers label every series with node and worker, so the fleet's sum and each worker's share are
    plain PromQL, and the alert rules evaluate cleanly on the labelled series."""
    async with worker_system(SCRAPED) as system:
        fleet = [AnsweringCharger(system.ws, cp) for cp in SCRAPED]
        try:
            await asyncio.gather(*(c.connect() for c in fleet))
            per_worker = await wait_until(
                lambda: _if_total(system.connected_per_worker(), len(fleet)), "30 connected over the workers")
            base = system.metrics_base
            targets = {"csms": [f"127.0.0.1:{base + i}" for i in range(WORKERS)],
                       "ingest": [f"127.0.0.1:{base + WORKERS}"]}
            with running_prometheus(targets, sorted(RULES_DIR.glob("*.yml"))) as prometheus:
                await asyncio.to_thread(prometheus.wait_targets_up, ("csms", "ingest"), 60)
                await asyncio.to_thread(prometheus.wait_scrapes, ("csms", "ingest"), count=2, timeout_s=60)
                settled = time.time()
                await asyncio.to_thread(prometheus.wait_rules_evaluated, after=settled, timeout_s=30)
                up = await asyncio.to_thread(prometheus.query, 'count(up{job="csms"} == 1)')
                assert _values(up) == {(): float(WORKERS)}, up.brief()
                total = await asyncio.to_thread(prometheus.query, "sum(csms_chargers_connected)")
                assert _values(total) == {(): float(len(fleet))}, total.brief()
                by_worker = await asyncio.to_thread(
                    prometheus.query, 'sum by (node, worker) (csms_chargers_connected{job="csms"})')
                assert _values(by_worker) == {(NODE, str(i)): n for i, n in enumerate(per_worker) if n}, \
                    by_worker.brief()
                workers = await asyncio.to_thread(prometheus.query, 'count by (worker) (csms_build_info{role="serve"})')
                assert set(_values(workers)) == {(str(i),) for i in range(WORKERS)}, workers.brief()
                groups = await asyncio.to_thread(prometheus.rule_groups)
                failing = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
                assert not failing, failing
        finally:
            await asyncio.gather(*(c.close() for c in fleet))


def _values(result: Any) -> dict[tuple[str, ...], float]:
    """An instant vector as {label values (sorted by label name, job/instance left out): value}."""
    assert result.ok, result.error
    return {tuple(v for k, v in sorted(item["metric"].items()) if k not in ("job", "instance")):
            float(item["value"][1]) for item in result.result}


async def test_serve_with_workers_on_the_given_database_and_broker(postgres: PostgresService,
                                                                  mosquitto: MosquittoService) -> None:
    """The production role: ``csms serve --workers 2`` on an existing database and broker (no ingest of its
    own, nothing embedded); both workers take chargers and the one API port reaches them all."""
    db_url = postgres.create_database("workers")
    workdir = make_shared_tmpdir("csms-serve-workers-")
    base = free_port_block(2)
    proc = start_csms(["serve", "--workers", "2", "--node-id", "sv", "--database-url", db_url, "--mqtt-url",
                       mosquitto.url, "--metrics-port-base", str(base), "--data-dir", str(workdir / "state"),
                       "--ping-interval-s", "0", "--kdf-queue-max-per-source", "128"], workdir=workdir)
    fleet = [AnsweringCharger(proc.ws, cp) for cp in SERVED]
    try:
        await prepare(db_url, SERVED)
        await asyncio.to_thread(proc.wait_healthy, 120)
        await wait_until(lambda: "all 2 workers ready" in proc.log(), "workers ready", 120)
        token = (workdir / "state" / "api-token").read_text().strip()
        await asyncio.gather(*(c.connect() for c in fleet))
        async with httpx.AsyncClient(base_url=proc.http, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as http:
            listed = await wait_until(lambda: _listed(http, len(fleet)), "every charger listed", 30)
            assert {c["node_id"] for c in listed} <= {"sv-w0", "sv-w1"}, listed
            for c in fleet:
                response = await http.post(f"/api/v1/charge-points/{c.cp_id}/ocpp/TriggerMessage",
                                           json={"requestedMessage": "Heartbeat"})
                assert response.status_code == 200, (c.cp_id, response.text)
        assert "embedded" not in proc.log()  # neither PostgreSQL nor Mosquitto of its own
    finally:
        await asyncio.gather(*(c.close() for c in fleet))
        rc = await asyncio.to_thread(proc.stop, signal.SIGINT, 120)  # Ctrl-C: the same orderly stop
        log = proc.log()
        shutil.rmtree(workdir, ignore_errors=True)
        postgres.drop_database(db_url)
    assert rc == 0, log[-4000:]


async def _listed(http: httpx.AsyncClient, count: int) -> list[dict[str, Any]] | None:
    response = await http.get("/api/v1/connections")
    listed = list(response.json()) if response.status_code == 200 else []
    return listed if len(listed) == count else None


def _serve_workers(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "csms", "serve", "--workers", "2", "--data-dir", str(tmp_path),
                           "--ocpp-host", "127.0.0.1", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_serve_with_workers_needs_a_broker_and_a_database(tmp_path: Path) -> None:
    proc = _serve_workers(tmp_path)
    assert proc.returncode == 1
    assert "needs --database-url and --mqtt-url" in proc.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """A worker that exits before it is ready would fail the same way again: status 1 and the reason, not a
    restart loop. Nothing listens on port 1, so every worker fails to reach its database."""
    proc = _serve_workers(tmp_path, "--database-url", "postgresql://csms:x@127.0.0.1:1/csms", "--mqtt-url",
                          "mqtt://127.0.0.1:1", "--ocpp-port", "0", "--http-port", "0",
                          "--metrics-port-base", str(free_port_block(2)))
    assert proc.returncode == 1, proc.stderr
    assert "before it was ready" in proc.stderr, proc.stderr
    assert "restarting" not in proc.stderr


def test_a_port_held_by_another_program_is_refused_at_once(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _serve_workers(tmp_path, "--database-url", "postgresql://csms:x@127.0.0.1:1/csms", "--mqtt-url",
                              "mqtt://127.0.0.1:1", "--ocpp-port", str(port))
    assert proc.returncode == 1, proc.stderr
    assert "Address already in use" in proc.stderr, proc.stderr
    assert " started (pid" not in proc.stderr  # no worker was started

