"""/healthz is liveness (200 while the process answers), /readyz is readiness (database, bus, not
draining): what load balancers and Kubernetes probes rely on (deploy/haproxy, deploy/k8s)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.central import PASSWORD, running_central
from tests.chargers import connect_charger

pytestmark = pytest.mark.integration


async def test_ready_until_the_drain_starts_and_alive_throughout(db_url: str) -> None:
    async with running_central(db_url, drain_rate_per_s=2.0, shutdown_timeout_s=20.0) as central:
        for i in range(6):
            await central.register(f"RDY{i}", evses=1)
        async with httpx.AsyncClient(base_url=central.http_base, timeout=10) as http, \
                contextlib.AsyncExitStack() as chargers:
            ready = (await http.get("/readyz")).json()
            assert ready == {"ok": True, "database": True, "bus": True, "draining": False}
            assert (await http.get("/healthz")).status_code == 200
            for i in range(6):
                await chargers.enter_async_context(connect_charger(central.ws_base, f"RDY{i}", "1.6",
                                                                   password=PASSWORD))
            assert central.system.gateway is not None
            closing = asyncio.create_task(central.system.gateway.close(timeout_s=20.0))
            deadline = time.monotonic() + 30
            while (await http.get("/readyz")).status_code != 503:
                assert time.monotonic() < deadline, "readiness never turned 503 during the drain"
                await asyncio.sleep(0.05)
            assert (await http.get("/readyz")).json()["draining"] is True
            assert (await http.get("/healthz")).status_code == 200   # alive while draining
            await closing


async def test_a_full_process_answers_503_with_retry_after(db_url: str) -> None:
    async with running_central(db_url, max_connections_per_process=2) as central:
        for i in range(3):
            await central.register(f"CAP{i}", evses=1)
        async with connect_charger(central.ws_base, "CAP0", "1.6", password=PASSWORD), \
                connect_charger(central.ws_base, "CAP1", "1.6", password=PASSWORD):
            with pytest.raises(InvalidStatus) as refused:
                async with connect_charger(central.ws_base, "CAP2", "1.6", password=PASSWORD):
                    pass
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "5"
        # Room again once a charger has left (its handler has ended).
        deadline = time.monotonic() + 30
        while central.system.gateway is not None and len(central.system.gateway.live) > 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with connect_charger(central.ws_base, "CAP2", "1.6", password=PASSWORD):
            pass
