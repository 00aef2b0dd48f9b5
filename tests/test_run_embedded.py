"""``csms run``: one command, a private TimescaleDB, chargers and HTTP answered, data kept."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from tests.harness import make_shared_tmpdir
from tests.processes import basic_auth, csms_command, start_csms

PASSWORD = "correct-horse-battery-staple"

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_shared_tmpdir("csms-run-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _db_url(workdir: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "csms", "db-url", "--data-dir", str(workdir / ".csms")],
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.strip()


async def _events_of(url: str, cp_id: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT event FROM connection_events WHERE charge_point_id = $1 ORDER BY time",
                                cp_id)
        return [r["event"] for r in rows]
    finally:
        await conn.close()


async def test_run_serves_chargers_and_http_and_keeps_data_across_restarts(workdir: Path) -> None:
    out = await asyncio.to_thread(csms_command, ["charge-points", "add", "CP-RUN-1", "--password", PASSWORD,
                                                 "--data-dir", str(workdir / ".csms")])
    assert "registered" in out
    first = start_csms(["run"], workdir=workdir)
    try:
        await asyncio.to_thread(first.wait_healthy)
        async with websockets.connect(first.ws + "/CP-RUN-1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("CP-RUN-1", PASSWORD)) as ws:
            assert ws.subprotocol == "ocpp1.6"
        async with httpx.AsyncClient(base_url=first.http) as http:
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert 'csms_connections_opened_total{ocpp_version="1.6"} 1.0' in metrics.text
            assert (await http.get("/api/v1/charge-points")).status_code == 401
            token = (workdir / ".csms" / "api-token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/api/v1/charge-points", headers=auth)).status_code == 200
            assert (await http.get("/api/v1/charge-points",
                                   headers={"Authorization": "Bearer wrong-token-wrong-token"})).status_code == 401
        url = _db_url(workdir)
        # The disconnect is stored once the server has seen the close: wait for it (bounded), no fixed sleep.
        events: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            events = await _events_of(url, "CP-RUN-1")
            if len(events) >= 2:
                break
            await asyncio.sleep(0.1)
        assert events == ["connected", "disconnected"]
    finally:
        rc = await asyncio.to_thread(first.stop)
    assert rc == 0, first.log()
    assert "stopped" in first.log()

    second = start_csms(["run"], workdir=workdir)
    try:
        await asyncio.to_thread(second.wait_healthy)
        url = _db_url(workdir)
        assert await _events_of(url, "CP-RUN-1") == ["connected", "disconnected"]  # still there
        assert "initialising" not in second.log()
        psql = subprocess.run(["psql", url, "-t", "-A", "-c", "SELECT count(*) FROM schema_migrations"],
                              capture_output=True, text=True, timeout=30, check=True)
        assert int(psql.stdout.strip()) >= 1
    finally:
        assert await asyncio.to_thread(second.stop, 15) == 0, second.log()


async def test_run_refuses_a_charger_without_an_ocpp_subprotocol(workdir: Path) -> None:
    await asyncio.to_thread(csms_command, ["charge-points", "add", "CP-X", "--password", PASSWORD,
                                           "--data-dir", str(workdir / ".csms")])
    proc = start_csms(["run"], workdir=workdir)
    try:
        await asyncio.to_thread(proc.wait_healthy)
        async with websockets.connect(proc.ws + "/CP-X", subprotocols=["ocpp1.2"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("CP-X", PASSWORD)) as ws:
            assert ws.subprotocol is None
            with pytest.raises(websockets.ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1002
    finally:
        assert await asyncio.to_thread(proc.stop) == 0, proc.log()
