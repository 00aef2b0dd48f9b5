"""The fleet registry's lease rules through a real central system (in-process, real database): a node
reports what its previous process left before it accepts chargers, the janitor records a dead node's
chargers disconnected at its last renewal, and a node that finds its lease gone takes it back with its
connections (issue 13 items 2, 3)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import websockets

from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth

pytestmark = pytest.mark.integration

FAST = {"lease_s": 1.5, "lease_renew_s": 0.3}


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.1)


async def _orphan(db: asyncpg.Connection, node: str, cp: str, epoch: int, *, renewed: datetime, expires: datetime,
                  connected: datetime) -> None:
    await db.execute("INSERT INTO node_leases (node_id, incarnation, started_at, renewed_at, expires_at) "
                     "VALUES ($1, $2, $3, $3, $4)", node, uuid.uuid4(), renewed, expires)
    await db.execute("INSERT INTO live_connections (charge_point_id, node_id, connection_epoch, ocpp_version, "
                     "connected_at) VALUES ($1, $2, $3, '1.6', $4)", cp, node, epoch, connected)


async def test_a_restarted_node_reports_what_its_previous_process_left(db_url: str, db: asyncpg.Connection) -> None:
    """A crashed process left a row and a lease that is still valid: the next process with that node id
    records the charger disconnected (reason node_lost, at the old lease's last renewal) before it
    accepts chargers, and takes the lease."""
    renewed = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    await _orphan(db, "test-node", "REG-1", 4, renewed=renewed, expires=renewed + timedelta(hours=1),
                  connected=renewed - timedelta(minutes=5))
    old_incarnation = await db.fetchval("SELECT incarnation FROM node_leases WHERE node_id = 'test-node'")
    async with running_central(db_url) as central:
        await central.register("REG-1")
        row = await db.fetchrow("SELECT time, reason, node_id, connection_epoch FROM connection_events "
                                "WHERE charge_point_id = 'REG-1' AND event = 'disconnected'")
        assert row is not None   # written before the gateway accepted anything (in-process bus: committed)
        assert dict(row) == {"time": renewed, "reason": "node_lost", "node_id": "test-node", "connection_epoch": 4}
        assert await db.fetchval("SELECT count(*) FROM live_connections WHERE charge_point_id = 'REG-1'") == 0
        assert await db.fetchval("SELECT incarnation FROM node_leases WHERE node_id = 'test-node'") \
            != old_incarnation
    # A clean stop gives the lease up.
    assert await db.fetchval("SELECT count(*) FROM node_leases WHERE node_id = 'test-node'") == 0


async def test_the_janitor_records_a_dead_nodes_chargers_disconnected(db_url: str, db: asyncpg.Connection) -> None:
    """Node "ghost" stopped renewing: once this node has renewed its own lease for a whole lease, its
    janitor records ghost's chargers disconnected, never before their "connected" time, and removes
    ghost's rows and lease; /connections and /charge-points show them nowhere."""
    now = datetime.now(UTC).replace(microsecond=0)
    async with running_central(db_url, **FAST) as central:
        for cp in ("GHOST-1", "GHOST-2"):
            await central.register(cp)
        # GHOST-2 connected after ghost's last renewal: its disconnect takes the connect's time.
        await _orphan(db, "ghost", "GHOST-1", 2, renewed=now - timedelta(seconds=30),
                      expires=now - timedelta(seconds=20), connected=now - timedelta(minutes=3))
        await db.execute("INSERT INTO live_connections (charge_point_id, node_id, connection_epoch, ocpp_version, "
                         "connected_at) VALUES ('GHOST-2', 'ghost', 7, '2.0.1', $1)", now - timedelta(seconds=25))

        async def cleaned() -> bool:
            # The events are made durable first and the rows removed after (a crash in between leaves the
            # rows for the next janitor run): the clean-up is done when both are.
            recorded = await db.fetchval("SELECT count(*) FROM connection_events WHERE node_id = 'ghost' "
                                         "AND event = 'disconnected' AND reason = 'node_lost'")
            leased = await db.fetchval("SELECT count(*) FROM node_leases WHERE node_id = 'ghost'")
            return bool(recorded == 2 and leased == 0)
        await eventually(cleaned, what="ghost's chargers recorded disconnected and its lease removed")
        rows = {r["charge_point_id"]: (r["time"], r["connection_epoch"]) for r in await db.fetch(
            "SELECT charge_point_id, time, connection_epoch FROM connection_events WHERE node_id = 'ghost'")}
        assert rows == {"GHOST-1": (now - timedelta(seconds=30), 2), "GHOST-2": (now - timedelta(seconds=25), 7)}
        assert await db.fetchval("SELECT count(*) FROM live_connections WHERE node_id = 'ghost'") == 0
        assert await db.fetchval("SELECT count(*) FROM node_leases WHERE node_id = 'ghost'") == 0
        async with central.api() as api:
            assert (await api.get("/api/v1/connections")).json() == []
            assert not any(r["connected"] for r in (await api.get("/api/v1/charge-points")).json())
            assert (await api.post("/api/v1/charge-points/GHOST-1/reset", json={})).status_code == 409


async def test_a_node_that_finds_its_lease_gone_takes_it_back_with_its_connections(
        db_url: str, db: asyncpg.Connection) -> None:
    """While a charger is connected, the node's lease and rows vanish (declared dead while it was cut off
    from the database, or PostgreSQL lost its unlogged tables): at the next renewal the node takes the lease
    again, registers the charger again and records it connected again (reason lease_restored)."""
    async with running_central(db_url, **FAST) as central:
        await central.register("BACK-1")
        async with websockets.connect(f"{central.ws_base}/BACK-1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("BACK-1", PASSWORD)) as ws:
            await ws.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3

            async def registered() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM live_connections WHERE charge_point_id = "
                                              "'BACK-1' AND node_id = 'test-node'"))
            await eventually(registered, what="the charger's row")
            epoch = await db.fetchval("SELECT connection_epoch FROM live_connections WHERE charge_point_id = 'BACK-1'")
            async with db.transaction():
                await db.execute("DELETE FROM live_connections")
                await db.execute("DELETE FROM node_leases")
            await eventually(registered, what="the row written again")
            assert await db.fetchval("SELECT count(*) FROM node_leases WHERE node_id = 'test-node'") == 1

            async def recorded() -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM connection_events WHERE charge_point_id = 'BACK-1' AND event = "
                    "'connected' AND reason = 'lease_restored' AND connection_epoch = $1", epoch))
            await eventually(recorded, what="the charger recorded connected again")
