"""Key rotation across nodes (issue 14 item 3): two ``csms serve`` processes on one database and one broker, with
one credential secret. Asked on node A for a charger held by node B: the key goes through B's socket, the
charger's first login with it on A retires the old key on both nodes (the rotation's state is in the database)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from csms.run.ports import free_port
from tests.central import PASSWORD
from tests.chargers import connect_charger
from tests.harness import MosquittoService, PostgresService, make_shared_tmpdir
from tests.pipeline import Role, prepare
from tests.rotation_chargers import KeyCharger16, boot, status, steps, wait_for

pytestmark = pytest.mark.integration

TOKEN = "rotation-test-operator-token-0123456789"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_shared_tmpdir("csms-keyrot-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def keyrot_db(postgres: PostgresService) -> AsyncIterator[str]:
    url = postgres.create_database("keyrot")
    await prepare(url, ["KR-1"])
    try:
        yield url
    finally:
        postgres.drop_database(url)


def _node(workdir: Path, db_url: str, mqtt_url: str, node_id: str) -> tuple[Role, str]:
    port = free_port()
    role = Role("serve-" + node_id, [
        "serve", "--database-url", db_url, "--mqtt-url", mqtt_url, "--ocpp-port", str(port), "--ocpp-host",
        "127.0.0.1", "--node-id", node_id, "--data-dir", str(workdir / f"state-{node_id}"), "--api-token", TOKEN,
        "--credential-secret-file", str(workdir / "credential-secret"), "--ping-interval-s", "0",
        "--handshake-burst-per-source", "100000", "--handshake-rate-per-source-per-s", "100000",
        "--call-timeout-s", "5"], workdir)
    return role, f"ws://127.0.0.1:{port}/ocpp"


@contextlib.asynccontextmanager
async def _nodes(workdir: Path, db_url: str, mqtt_url: str) -> AsyncIterator[list[tuple[Role, str]]]:
    nodes = [_node(workdir, db_url, mqtt_url, n) for n in ("node-a", "node-b")]
    for role, _ in nodes:
        role.start()
    try:
        for role, _ in nodes:
            await asyncio.to_thread(role.wait_healthy)
            await asyncio.to_thread(role.wait_log, "node link connected", 60)
        yield nodes
    finally:
        for role, _ in nodes:
            role.stop()


def _api(role: Role) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{role.http_port}",
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


async def test_rotation_asked_on_one_node_for_a_charger_on_the_other(workdir: Path, keyrot_db: str,
                                                                     mosquitto: MosquittoService) -> None:
    async with _nodes(workdir, keyrot_db, mosquitto.url) as [(a, a_ws), (b, b_ws)]:
        async with connect_charger(b_ws, "KR-1", "1.6", password=PASSWORD, cls=KeyCharger16) as cp:
            await boot(cp, "1.6")

            async def seen_on_a() -> bool:
                async with _api(a) as api:
                    listed = (await api.get("/api/v1/connections")).json()
                return any(c["charge_point_id"] == "KR-1" and c["node_id"] == "node-b" for c in listed)

            await wait_for(seen_on_a, what="KR-1 listed on node A as held by node B")
            async with _api(a) as api:
                reply = await api.post("/api/v1/charge-points/KR-1/credentials/rotate")
            assert reply.status_code == 200, reply.text
            assert reply.json()["state"] == "accepted"
            assert reply.json()["events"][1] == {**reply.json()["events"][1], "step": "sent", "actor": "node:node-b"}
            (key,) = cp.keys
        assert await status(b_ws, "KR-1", PASSWORD) == 101          # mid-rotation, on B: the old key
        assert await status(a_ws, "KR-1", key) == 101               # the new one on A: the old one retired
        assert await status(b_ws, "KR-1", PASSWORD) == 401
        assert await status(b_ws, "KR-1", key) == 101
        async with _api(b) as api:
            (rotation,) = (await api.get("/api/v1/charge-points/KR-1/credentials/rotations")).json()
        assert rotation["state"] == "completed"
        assert steps(rotation) == ["requested", "sent", "accepted", "old_key_login", "new_key_login",
                                   "old_key_retired"]
