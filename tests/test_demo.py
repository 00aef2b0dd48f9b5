"""``csms run --demo``: one command, and live data in the API within a minute."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import make_shared_tmpdir
from tests.processes import start_csms

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_shared_tmpdir("csms-demo-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


WAIT_S = 240.0


async def _until(check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


async def test_demo_shows_live_chargers_sessions_and_open_data(workdir: Path) -> None:
    proc = start_csms(["run", "--demo", "--demo-history-days", "0.25"], workdir=workdir)
    try:
        await asyncio.to_thread(proc.wait_healthy)
        started = time.monotonic()
        token = (workdir / ".csms" / "api-token").read_text().strip()
        async with httpx.AsyncClient(base_url=proc.http, headers={"Authorization": f"Bearer {token}"},
                                     timeout=10) as api:
            async def connected() -> list[dict[str, Any]]:
                # A charger is listed as soon as its websocket is open, before its BootNotification
                # is answered: wait for the state asserted below (all 15 listed and Accepted).
                rows: list[dict[str, Any]] = (await api.get("/api/v1/connections")).json()
                accepted = len(rows) == 15 and all(c["registration"] == "Accepted" for c in rows)
                return rows if accepted else []

            async def sessions() -> list[dict[str, Any]]:
                rows: list[dict[str, Any]] = (await api.get("/api/v1/transactions", params={"limit": 50})).json()
                return rows if any(r["meter_stop_wh"] is not None for r in rows) else []

            async def first_charger() -> dict[str, Any] | None:
                # Simulated chargers have short offline periods: wait until this one is connected and
                # its statuses are stored, rather than asserting on one snapshot.
                state: dict[str, Any] = (await api.get("/api/v1/charge-points/DEMO-00000/state")).json()
                return state if state["connection"] is not None and state["connectors"] else None

            # The demo needs well under a minute on a quiet machine (docs/simulator.md); the
            # bound here is generous because tests never judge speed on a shared machine.
            live = await _until(connected, WAIT_S - (time.monotonic() - started))
            assert len(live) == 15, proc.log()
            assert {c["ocpp_version"] for c in live} == {"1.6", "2.0.1"}
            assert all(c["registration"] == "Accepted" for c in live)
            done = await _until(sessions, WAIT_S - (time.monotonic() - started))
            assert done, proc.log()
            assert all(r["energy_wh"] is None or r["energy_wh"] >= 0 for r in done)
            state = await _until(first_charger, WAIT_S - (time.monotonic() - started))
            assert state is not None, proc.log()
            assert state["connection"] is not None
            assert state["connectors"]
        async with httpx.AsyncClient(base_url=proc.http, timeout=10) as public:   # no token needed
            feed = (await public.get("/open-data/ocpi/locations")).json()
        locations = feed["data"] if isinstance(feed, dict) else feed
        assert {loc["time_zone"] for loc in locations} >= {"Asia/Kolkata", "America/Los_Angeles"}
        assert all(loc["coordinates"]["latitude"] for loc in locations)
        log = proc.log()
        assert "csms demo: 15 simulated chargers" in log
        assert "operator token" in log
    finally:
        rc = await asyncio.to_thread(proc.stop)
    assert rc == 0, proc.log()
    assert "stopped" in proc.log()
