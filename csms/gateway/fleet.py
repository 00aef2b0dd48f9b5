"""This node's part of the fleet registry: its lease, its chargers' rows, the node-loss janitor.

* **Lease.** Every ``lease_renew_s`` the node renews its row in ``node_leases`` (expiry ``lease_s``
  ahead). Only rows of nodes with a valid lease are "connected" anywhere in the fleet.
* **Rows.** A websocket registered locally (``Gateway`` does that before any await) is queued here and
  written in batches by one writer task: the newest epoch wins wherever it is. A registration that
  replaced another node's row tells that node to close its older socket (``on_takeover``); one that lost
  (a newer websocket of the charger is registered already) closes the local one (``on_stale``).
  A disconnect deletes the row only if it is still that connection's.
* **Node loss.** Once its own renewals have succeeded for a whole ``lease_s`` (after a database outage
  every lease looks expired: the others get that long to renew first), the janitor of each node, one at
  a time (an advisory lock), takes the rows of nodes whose lease expired, publishes a durable
  "disconnected" for each (reason ``node_lost``, the row's epoch, the dead node's id, time = its last
  renewal), then deletes the rows and the lease. A starting node does the same for what its previous
  incarnation (same node id) left, before it accepts chargers. A node that finds its own lease gone
  (declared dead while it was cut off from the database, or PostgreSQL lost the unlogged tables) takes
  it again, registers its connections again and records them "connected" again (reason
  ``lease_restored``), so that nothing stays offline that is online.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from csms.store import fleet as store
from schemas.bus import Bus, BusError
from schemas.events import ConnectionEvent

logger = logging.getLogger(__name__)

# Rows per registry statement and events per bus publish: a reconnect storm of thousands of chargers
# costs a few round trips, and no single statement or outbox batch grows without bound.
BATCH_ROWS = 500
# What a database failure looks like from asyncpg (the server, the socket, a pool timeout).
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class LocalConnection(Protocol):
    """What the registry needs of a charger's websocket on this node (``ChargerConnection``)."""

    @property
    def charge_point_id(self) -> str: ...

    @property
    def ocpp_version(self) -> str: ...

    connection_epoch: int | None
    remote: str
    connected_at: datetime


@dataclass(frozen=True, slots=True)
class FleetMetrics:
    nodes_lost: Counter
    lease_renewal_failures: Counter
    lease_restored: Counter
    takeovers: Counter
    registry_pending: Gauge
    remote_commands: Counter
    remote_duplicates: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FleetMetrics:
        return cls(
            nodes_lost=Counter("csms_fleet_nodes_lost_total", "Nodes whose lease expired, cleaned up by this "
                               "node's janitor", registry=registry),
            lease_renewal_failures=Counter("csms_fleet_lease_renewal_failures_total", "Lease renewals that "
                                           "failed (database unreachable)", registry=registry),
            lease_restored=Counter("csms_fleet_lease_restored_total", "Times this node found its lease gone and "
                                   "registered its connections again", registry=registry),
            takeovers=Counter("csms_fleet_takeovers_total", "Older sockets closed because the charger "
                              "reconnected elsewhere, by direction (asked: this node told another one; "
                              "closed: this node closed its own)", ["direction"], registry=registry),
            registry_pending=Gauge("csms_fleet_registry_pending", "Connects and disconnects not yet written "
                                   "to the fleet registry", registry=registry),
            remote_commands=Counter("csms_remote_commands_total", "Commands across nodes, by role (sent: "
                                    "forwarded by this node; handled: received for a charger held here) and "
                                    "outcome", ["role", "outcome"], registry=registry),
            remote_duplicates=Counter("csms_remote_command_duplicates_total", "Commands received again (broker "
                                      "redelivery) and not sent to the charger again", registry=registry),
        )


class FleetDirectory:
    """The registry as this node writes it and reads it."""

    def __init__(self, *, pool: asyncpg.Pool, node_id: str, bus: Bus, lease_s: float, lease_renew_s: float,
                 metrics: FleetMetrics, retry_max_s: float = 5.0) -> None:
        self.pool = pool
        self.node_id = node_id
        self._bus = bus
        self._lease_s = lease_s
        self._renew_s = lease_renew_s
        self._metrics = metrics
        self._retry_max_s = retry_max_s
        self._incarnation = store.new_incarnation()
        self.local: Callable[[], Sequence[LocalConnection]] = list
        self.on_takeover: Callable[[str, str, int], None] | None = None   # (node, charger, newer epoch)
        self.on_stale: Callable[[str, int], None] | None = None           # (charger, our epoch)
        self._registers: dict[str, LocalConnection] = {}
        self._unregisters: dict[tuple[str, int], None] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._healthy_since: float | None = None
        self._duplicate_logged = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def lease_s(self) -> float:
        return self._lease_s

    async def start(self) -> None:
        """Report what a previous process with this node id left, take the lease; before chargers connect."""
        async with store.own_rows(self.pool, self.node_id, take_lease_as=self._incarnation,
                                  lease_s=self._lease_s) as cleanup:
            if cleanup.rows:
                logger.warning("node %s: %d chargers were still registered by its previous process; recorded "
                               "disconnected at its last lease renewal", self.node_id, len(cleanup.rows))
                await self._publish_lost(cleanup.rows, reason="node_lost")
            await cleanup.commit()
        self._healthy_since = time.monotonic()
        self._tasks = [asyncio.create_task(self._write_loop(), name="fleet-registry-writer"),
                       asyncio.create_task(self._lease_loop(), name="fleet-lease")]

    # -- this node's rows ---------------------------------------------------------------------------

    def registered(self, conn: LocalConnection) -> None:
        if conn.connection_epoch is None:
            return
        self._registers[conn.charge_point_id] = conn
        self._kick()

    def unregistered(self, conn: LocalConnection) -> None:
        if conn.connection_epoch is None:
            return
        if self._registers.get(conn.charge_point_id) is conn:
            del self._registers[conn.charge_point_id]  # never written: nothing to delete
        else:
            self._unregisters[(conn.charge_point_id, conn.connection_epoch)] = None
        self._kick()

    def _kick(self) -> None:
        self._metrics.registry_pending.set(len(self._registers) + len(self._unregisters))
        self._wake.set()

    async def _write_loop(self) -> None:
        backoff = 0.1
        while True:
            if not self._registers and not self._unregisters:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            regs = [self._registers.pop(cp) for cp in list(self._registers)[:BATCH_ROWS]]
            gone = list(self._unregisters)[:BATCH_ROWS]
            for key in gone:
                del self._unregisters[key]
            try:
                outcome = await store.register_many(self.pool, self.node_id, [_registration(c) for c in regs])
                await store.unregister_many(self.pool, self.node_id, gone)
            except DB_ERRORS as exc:
                logger.warning("fleet registry not written (%s); retrying in %.1f s", exc, backoff)
                for conn in regs:   # unless a newer websocket of the charger is queued meanwhile
                    self._registers.setdefault(conn.charge_point_id, conn)
                self._unregisters.update(dict.fromkeys(gone))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            backoff = 0.1
            self._metrics.registry_pending.set(len(self._registers) + len(self._unregisters))
            for conn in regs:
                try:
                    self._after_register(conn, outcome[conn.charge_point_id])
                except Exception:  # a failed takeover notice must not stop the writer
                    logger.exception("after registering %s", conn.charge_point_id)

    def _after_register(self, conn: LocalConnection, result: store.Registered) -> None:
        epoch = conn.connection_epoch
        assert epoch is not None
        if not result.won:
            # A newer websocket of this charger is registered (here or elsewhere): this one is stale (R28).
            logger.info("charge point %s has a newer connection than epoch %d; closing this one",
                        conn.charge_point_id, epoch)
            self._metrics.takeovers.labels("closed").inc()
            if self.on_stale is not None:
                self.on_stale(conn.charge_point_id, epoch)
        elif (result.previous_node not in (None, self.node_id) and result.previous_live
              and self.on_takeover is not None):
            assert result.previous_node is not None
            logger.info("charge point %s moved here from node %s; asking it to close its connection",
                        conn.charge_point_id, result.previous_node)
            self._metrics.takeovers.labels("asked").inc()
            self.on_takeover(result.previous_node, conn.charge_point_id, epoch)

    # -- the lease and the janitor ------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._renew_s)
            try:
                if not await store.renew_lease(self.pool, self.node_id, self._incarnation, self._lease_s):
                    await self._restore_lease()
                now = time.monotonic()
                if self._healthy_since is None:
                    self._healthy_since = now
                if now - self._healthy_since >= self._lease_s:
                    await self._janitor()
            except DB_ERRORS as exc:
                self._metrics.lease_renewal_failures.inc()
                if self._healthy_since is not None:
                    logger.warning("lease of node %s not renewed (%s); other nodes record its chargers "
                                   "disconnected once it is %.0f s old", self.node_id, exc, self._lease_s)
                self._healthy_since = None
            except BusError as exc:
                logger.warning("node-loss events could not be made durable (%s); the janitor tries again", exc)
            except Exception:  # the lease must outlive any single failure
                logger.exception("fleet lease renewal of node %s failed", self.node_id)

    async def _restore_lease(self) -> None:
        held = await store.lease_state(self.pool, self.node_id)
        if held is not None and held["valid"] and held["incarnation"] != self._incarnation:
            # Two processes with one node id take each other's lease (and rows) at every renewal.
            log = logger.debug if self._duplicate_logged else logger.error
            self._duplicate_logged = True
            log("node id %s is in use by another process as well (its lease was renewed at %s); give every "
                "gateway process its own --node-id", self.node_id, held["renewed_at"])
        conns = [c for c in self.local() if c.connection_epoch is not None]
        logger.warning("node %s found its lease gone (declared lost while cut off from the database, or the "
                       "registry tables were emptied); taking it again with its %d connections", self.node_id,
                       len(conns))
        self._metrics.lease_restored.inc()
        await store.take_lease(self.pool, self.node_id, self._incarnation, self._lease_s)
        now = datetime.now(UTC)
        events = [ConnectionEvent(charge_point_id=c.charge_point_id, received_at=now, time=now, event="connected",
                                  reason="lease_restored", node_id=self.node_id, ocpp_version=c.ocpp_version,
                                  connection_epoch=c.connection_epoch) for c in conns]
        for first in range(0, len(events), BATCH_ROWS):
            await self._bus.publish(events[first:first + BATCH_ROWS])
        for conn in conns:
            self._registers.setdefault(conn.charge_point_id, conn)
        self._kick()

    async def _janitor(self) -> None:
        async with store.dead_nodes(self.pool, orphan_after_s=self._lease_s) as cleanup:
            if cleanup is None or (not cleanup.rows and not cleanup.dead_nodes):
                return
            await self._publish_lost(cleanup.rows, reason="node_lost")
            await cleanup.commit()
        self._metrics.nodes_lost.inc(len(cleanup.dead_nodes))
        logger.warning("node(s) %s lost (lease expired): %d chargers recorded disconnected",
                       ", ".join(cleanup.dead_nodes) or "-", len(cleanup.rows))

    async def _publish_lost(self, rows: Sequence[store.LostRow], *, reason: str, at: datetime | None = None) -> None:
        now = datetime.now(UTC)
        events = [ConnectionEvent(charge_point_id=r.charge_point_id, received_at=now, time=at or r.last_alive_at,
                                  event="disconnected", reason=reason, node_id=r.node_id,
                                  ocpp_version=r.ocpp_version, connection_epoch=r.connection_epoch) for r in rows]
        for first in range(0, len(events), BATCH_ROWS):
            await self._bus.publish(events[first:first + BATCH_ROWS])

    # -- reads --------------------------------------------------------------------------------------

    async def lookup(self, charge_point_id: str) -> store.FleetEntry | None:
        return await store.lookup(self.pool, charge_point_id)

    async def others(self) -> list[store.FleetEntry]:
        """Chargers registered by other live nodes."""
        return await store.fleet(self.pool, exclude_node=self.node_id)

    async def connected_elsewhere(self) -> set[str]:
        return {e.charge_point_id for e in await self.others()}

    # -- stop ---------------------------------------------------------------------------------------

    async def stop(self, *, timeout_s: float) -> None:
        """After the gateway closed: write the last disconnects, report rows of sockets whose handler did not
        end (``server_shutdown``), give the lease up. Bounded by ``timeout_s``."""
        self._closing = True
        self._wake.set()
        writer, lease = self._tasks or (None, None)
        if lease is not None:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
        if writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._tasks = []
        try:
            async with store.own_rows(self.pool, self.node_id) as cleanup:
                if cleanup.rows:
                    await self._publish_lost(cleanup.rows, reason="server_shutdown", at=datetime.now(UTC))
                await cleanup.commit()
            await store.release_lease(self.pool, self.node_id, self._incarnation)
        except (*DB_ERRORS, BusError) as exc:
            logger.warning("fleet registry not cleaned up at stop (%s); other nodes do it once the lease "
                           "expires", exc)


def _registration(conn: LocalConnection) -> store.Registration:
    assert conn.connection_epoch is not None
    return store.Registration(conn.charge_point_id, conn.connection_epoch, conn.ocpp_version, conn.remote,
                              conn.connected_at)


def lease_renew_interval_s(lease_s: float, lease_renew_s: float | None) -> float:
    """The renewal period: the setting, or a third of the lease (two renewals may fail before it expires)."""
    return lease_renew_s if lease_renew_s is not None else lease_s / 3

