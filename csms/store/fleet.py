"""The fleet registry in PostgreSQL: node leases and the charger → node directory (migration 0009).

Every gateway node holds a lease (``node_leases``) that it renews; a charger's row in
``live_connections`` names the node holding its newest websocket. Only rows of nodes with an
unexpired lease are "connected" (the fleet view). The node-loss janitor and a restarting node
collect the rows of dead nodes here, in one transaction that the caller commits after it has made
the "disconnected" events durable (``NodeCleanup``), so that a crash in between leaves the rows for
the next janitor instead of losing the events.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# pg_try_advisory_xact_lock key ("csmsflt1"): one janitor (or restart clean-up) at a time in the database.
_JANITOR_LOCK_KEY: Final = 0x63736D73666C7431


@dataclass(frozen=True, slots=True)
class FleetEntry:
    """A charger's registered websocket: which node holds it, with which epoch."""

    charge_point_id: str
    node_id: str
    connection_epoch: int
    ocpp_version: str
    remote: str
    connected_at: datetime
    registration: str | None = None        # charge_points.registration_status
    last_seen_at: datetime | None = None   # charge_points.last_seen_at (the newest stored event)


@dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of registering a websocket: won (the newest), and the holder it replaced."""

    won: bool
    previous_node: str | None = None
    previous_epoch: int | None = None
    previous_live: bool = False


@dataclass(frozen=True, slots=True)
class LostRow:
    """A row of a dead node (or of this node's previous incarnation) and when that node was last known alive
    with it: its last lease renewal, or the row's connected_at if later (the connection's "connected" event
    has that time: its "disconnected" must not come before it, or the charger would read online for ever)."""

    charge_point_id: str
    node_id: str
    connection_epoch: int
    ocpp_version: str
    last_alive_at: datetime


_LEASE_INTERVAL = "make_interval(secs => $2::double precision)"

_TAKE_LEASE = (
    "INSERT INTO node_leases (node_id, incarnation, started_at, renewed_at, expires_at) "
    f"VALUES ($1, $3, now(), now(), now() + {_LEASE_INTERVAL}) ON CONFLICT (node_id) DO UPDATE SET "
    "incarnation = EXCLUDED.incarnation, started_at = EXCLUDED.started_at, renewed_at = EXCLUDED.renewed_at, "
    "expires_at = EXCLUDED.expires_at")

_RENEW = (f"UPDATE node_leases SET renewed_at = now(), expires_at = now() + {_LEASE_INTERVAL} "
          "WHERE node_id = $1 AND incarnation = $3")

# Newest wins: a row is replaced only by a higher epoch (or re-asserted by its own holder); the replaced
# holder is kept in prev_* so that it comes back in RETURNING (which sees only the new version of the row).
# No row back for a charger: a newer websocket of it is registered already, this one is stale. One
# statement for a whole batch (the batch holds each charger once: ON CONFLICT may touch a row only once).
_REGISTER_MANY = (
    "INSERT INTO live_connections AS lc (charge_point_id, node_id, connection_epoch, ocpp_version, remote, "
    "connected_at) SELECT cp, $2::text, epoch, version, remote, since FROM unnest($1::text[], $3::bigint[], "
    "$4::text[], $5::text[], $6::timestamptz[]) AS b(cp, epoch, version, remote, since) "
    "ON CONFLICT (charge_point_id) DO UPDATE SET "
    "prev_node_id = lc.node_id, prev_epoch = lc.connection_epoch, node_id = EXCLUDED.node_id, "
    "connection_epoch = EXCLUDED.connection_epoch, ocpp_version = EXCLUDED.ocpp_version, "
    "remote = EXCLUDED.remote, connected_at = EXCLUDED.connected_at "
    "WHERE lc.connection_epoch < EXCLUDED.connection_epoch "
    "OR (lc.connection_epoch = EXCLUDED.connection_epoch AND lc.node_id = EXCLUDED.node_id) "
    "RETURNING lc.charge_point_id, lc.prev_node_id, lc.prev_epoch, "
    "COALESCE((SELECT l.expires_at > now() FROM node_leases l WHERE l.node_id = lc.prev_node_id), false) AS live")

_UNREGISTER_MANY = ("DELETE FROM live_connections lc USING unnest($1::text[], $2::bigint[]) AS d(cp, epoch) "
                    "WHERE lc.charge_point_id = d.cp AND lc.connection_epoch = d.epoch AND lc.node_id = $3")

_FLEET_SELECT = (
    "SELECT lc.charge_point_id, lc.node_id, lc.connection_epoch, lc.ocpp_version, lc.remote, lc.connected_at, "
    "cp.registration_status AS registration, cp.last_seen_at FROM live_connections lc "
    "JOIN node_leases l ON l.node_id = lc.node_id AND l.expires_at > now() "
    "LEFT JOIN charge_points cp ON cp.id = lc.charge_point_id")


def _entry(row: asyncpg.Record) -> FleetEntry:
    return FleetEntry(row["charge_point_id"], row["node_id"], int(row["connection_epoch"]), row["ocpp_version"],
                      row["remote"], row["connected_at"], row["registration"], row["last_seen_at"])


def new_incarnation() -> uuid.UUID:
    return uuid.uuid4()


async def renew_lease(pool: asyncpg.Pool, node_id: str, incarnation: uuid.UUID, lease_s: float) -> bool:
    """Extend this process's lease; False: the row is gone (declared dead, or the table was emptied by a
    PostgreSQL crash) or another process with the same node id took it."""
    status = await pool.execute(_RENEW, node_id, lease_s, incarnation)
    return status.endswith(" 1")


async def take_lease(pool: asyncpg.Pool, node_id: str, incarnation: uuid.UUID, lease_s: float) -> None:
    """(Re-)insert this process's lease, replacing whatever row the node id had."""
    await pool.execute(_TAKE_LEASE, node_id, lease_s, incarnation)


async def release_lease(pool: asyncpg.Pool, node_id: str, incarnation: uuid.UUID) -> None:
    """A node stopping in order gives its lease up (its rows are gone by then, see ``own_rows``)."""
    await pool.execute("DELETE FROM node_leases WHERE node_id = $1 AND incarnation = $2", node_id, incarnation)


@dataclass(frozen=True, slots=True)
class Registration:
    """A websocket to register: the row this node wants for the charger."""

    charge_point_id: str
    connection_epoch: int
    ocpp_version: str
    remote: str
    connected_at: datetime


async def register_many(pool: asyncpg.Pool, node_id: str, batch: list[Registration]) -> dict[str, Registered]:
    """Register websockets of this node (one per charger in ``batch``) in one statement; per charger
    whether it won and whom it replaced. A reconnect storm costs one round trip per batch, not per charger."""
    if not batch:
        return {}
    rows = await pool.fetch(
        _REGISTER_MANY, [r.charge_point_id for r in batch], node_id, [r.connection_epoch for r in batch],
        [r.ocpp_version for r in batch], [r.remote for r in batch], [r.connected_at for r in batch])
    won = {row["charge_point_id"]: Registered(
        won=True, previous_node=row["prev_node_id"],
        previous_epoch=int(row["prev_epoch"]) if row["prev_epoch"] is not None else None,
        previous_live=bool(row["live"])) for row in rows}
    return {r.charge_point_id: won.get(r.charge_point_id, Registered(won=False)) for r in batch}


async def unregister_many(pool: asyncpg.Pool, node_id: str, gone: list[tuple[str, int]]) -> None:
    """Delete rows of (charger, epoch) only if they are still these connections' (never a newer one's,
    wherever it is)."""
    if gone:
        await pool.execute(_UNREGISTER_MANY, [cp for cp, _ in gone], [epoch for _, epoch in gone], node_id)


async def lookup(pool: asyncpg.Pool, charge_point_id: str) -> FleetEntry | None:
    row = await pool.fetchrow(_FLEET_SELECT + " WHERE lc.charge_point_id = $1", charge_point_id)
    return _entry(row) if row is not None else None


async def fleet(pool: asyncpg.Pool, *, exclude_node: str | None = None) -> list[FleetEntry]:
    """Every charger registered on a node with a live lease (optionally not this node's own rows)."""
    rows = await pool.fetch(_FLEET_SELECT + " WHERE lc.node_id IS DISTINCT FROM $1 ORDER BY lc.charge_point_id",
                            exclude_node)
    return [_entry(r) for r in rows]


async def connected_ids(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT lc.charge_point_id FROM live_connections lc JOIN node_leases l "
                            "ON l.node_id = lc.node_id AND l.expires_at > now()")
    return {r["charge_point_id"] for r in rows}


class NodeCleanup:
    """Rows of dead nodes read under the janitor's lock; ``commit`` deletes them and their leases."""

    def __init__(self, conn: PoolConnectionProxy, rows: list[LostRow], dead_nodes: list[str],
                 lease: tuple[str, uuid.UUID, float] | None = None) -> None:
        self._conn = conn
        self.rows = rows
        self.dead_nodes = dead_nodes
        self._lease = lease

    async def commit(self) -> None:
        """Delete the rows (and the dead nodes' leases); take this node's lease if asked, in the same
        transaction, so that no janitor sees the node without one in between."""
        if self.rows:
            await self._conn.execute(
                "DELETE FROM live_connections lc USING unnest($1::text[], $2::bigint[]) AS d(cp, epoch) "
                "WHERE lc.charge_point_id = d.cp AND lc.connection_epoch = d.epoch",
                [r.charge_point_id for r in self.rows], [r.connection_epoch for r in self.rows])
        if self.dead_nodes:
            await self._conn.execute("DELETE FROM node_leases WHERE node_id = ANY($1::text[]) "
                                     "AND expires_at <= now()", self.dead_nodes)
        if self._lease is not None:
            node_id, incarnation, lease_s = self._lease
            await self._conn.execute(_TAKE_LEASE, node_id, lease_s, incarnation)


@asynccontextmanager
async def dead_nodes(pool: asyncpg.Pool, *, orphan_after_s: float) -> AsyncIterator[NodeCleanup | None]:
    """The rows of nodes whose lease has expired, locked; None if another node's janitor is running.

    Also rows of nodes with no lease at all that are older than ``orphan_after_s`` (their node was declared
    dead while it still registered a websocket, then never renewed again). The caller publishes their
    "disconnected" events, then calls ``commit``; leaving the block without it rolls everything back.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _JANITOR_LOCK_KEY):
            yield None
            return
        leases = await conn.fetch("SELECT node_id, renewed_at FROM node_leases WHERE expires_at <= now() "
                                  "FOR UPDATE")
        rows = await conn.fetch(
            "SELECT lc.charge_point_id, lc.node_id, lc.connection_epoch, lc.ocpp_version, "
            "GREATEST(COALESCE(l.renewed_at, now()), lc.connected_at) AS last_alive_at FROM live_connections lc "
            "LEFT JOIN node_leases l ON l.node_id = lc.node_id "
            "WHERE l.node_id = ANY($1::text[]) OR (l.node_id IS NULL "
            "AND lc.connected_at < now() - make_interval(secs => $2::double precision)) "
            "ORDER BY lc.charge_point_id FOR UPDATE OF lc",
            [r["node_id"] for r in leases], orphan_after_s)
        yield NodeCleanup(conn, [_lost(r) for r in rows], [r["node_id"] for r in leases])


@asynccontextmanager
async def own_rows(pool: asyncpg.Pool, node_id: str, *, take_lease_as: uuid.UUID | None = None,
                   lease_s: float = 0.0) -> AsyncIterator[NodeCleanup]:
    """The rows under this node id, locked: at start, those a previous process with this node id left
    (it crashed; ``take_lease_as`` then takes the lease in the same commit); at a stop, those of sockets
    whose handler did not end in time.

    Waits for a running janitor (the same lock, blocking): both must not report the same rows.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _JANITOR_LOCK_KEY)
        rows = await conn.fetch(
            "SELECT lc.charge_point_id, lc.node_id, lc.connection_epoch, lc.ocpp_version, "
            "GREATEST(COALESCE(l.renewed_at, now()), lc.connected_at) AS last_alive_at FROM live_connections lc "
            "LEFT JOIN node_leases l ON l.node_id = lc.node_id WHERE lc.node_id = $1 "
            "ORDER BY lc.charge_point_id FOR UPDATE OF lc", node_id)
        lease = (node_id, take_lease_as, lease_s) if take_lease_as is not None else None
        yield NodeCleanup(conn, [_lost(r) for r in rows], [], lease)


async def lease_state(pool: asyncpg.Pool, node_id: str) -> asyncpg.Record | None:
    """This node id's lease as stored (incarnation, renewed_at, still valid), for start-up diagnostics."""
    return await pool.fetchrow("SELECT incarnation, renewed_at, expires_at > now() AS valid FROM node_leases "
                               "WHERE node_id = $1", node_id)


def _lost(row: asyncpg.Record) -> LostRow:
    return LostRow(row["charge_point_id"], row["node_id"], int(row["connection_epoch"]), row["ocpp_version"],
                   row["last_alive_at"])
