"""An in-process central system on free loopback ports, for integration tests."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from csms.run.central import CentralSystem
from csms.run.ports import free_port
from csms.store.registry import ChargePointSpec, EvseSpec, add_charge_point, add_id_token
from schemas.settings import Settings
from tests.harness import make_shared_tmpdir

API_TOKEN = "test-operator-token-0123456789"
PASSWORD = "correct-horse-battery-staple"


@dataclass
class RunningCentral:
    system: CentralSystem
    db_url: str

    @property
    def ws_base(self) -> str:
        assert self.system.gateway is not None
        scheme = "wss" if self.system.settings.security_profile >= 2 else "ws"
        return f"{scheme}://127.0.0.1:{self.system.gateway.port}/ocpp"

    @property
    def http_base(self) -> str:
        assert self.system.http is not None
        return f"http://127.0.0.1:{self.system.http.port}"

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_base, headers={"Authorization": f"Bearer {API_TOKEN}"},
                                 timeout=30)

    async def register(self, cp_id: str, *, evses: int = 2, password: str | None = PASSWORD,
                       security_profile: int = 1, admission: str = "accept", tolerant: bool = False) -> None:
        pool = await asyncpg.create_pool(self.db_url, min_size=1, max_size=1)
        try:
            await add_charge_point(pool, ChargePointSpec(
                id=cp_id, evses=tuple(EvseSpec(n + 1) for n in range(evses)), password=password,
                security_profile=security_profile, admission=admission, tolerant=tolerant))
        finally:
            await pool.close()

    async def add_token(self, token: str, status: str = "Accepted") -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            await add_id_token(conn, token, status=status)
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def running_central(db_url: str, **overrides: Any) -> AsyncIterator[RunningCentral]:
    tmp: Path = make_shared_tmpdir("csms-central-")
    values: dict[str, Any] = {
        "database_url": db_url, "ocpp_host": "127.0.0.1", "ocpp_port": free_port(), "http_port": free_port(),
        "api_token": API_TOKEN, "data_dir": tmp, "node_id": "test-node", "call_timeout_s": 5.0,
        "shutdown_timeout_s": 5.0, "handshake_burst_per_source": 100000, "handshake_rate_per_source_per_s": 1e6,
    }
    values.update(overrides)
    settings = Settings(**values)
    system = CentralSystem(settings, embedded=False)
    try:
        await system.start()
        yield RunningCentral(system=system, db_url=db_url)
    finally:
        await system.stop()
        shutil.rmtree(tmp, ignore_errors=True)


