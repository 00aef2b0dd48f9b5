"""Live state: which chargers are connected, what each is doing, recent sessions.

Connections are fleet-wide: this node's own from memory (exact, at once), the other nodes' from the
fleet registry (``csms.gateway.fleet``), which knows less of them: when the charger's newest stored
message arrived instead of its last message, and not how many commands wait for it.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from csms.api.common import CpId, UtcTime, database
from csms.gateway.connection import ChargerConnection
from csms.gateway.fleet import DB_ERRORS
from csms.gateway.server import Gateway
from csms.store import live_state
from csms.store.fleet import FleetEntry


class ConnectionOut(BaseModel):
    charge_point_id: str
    ocpp_version: str
    connected_since: UtcTime
    remote: str = Field(description="the charger's IP address")
    registration: str | None = Field(description="what its last BootNotification was answered")
    last_message_at: UtcTime | None = Field(description="its last message; for a charger on another node "
                                                        "the newest stored one")
    commands_waiting: int | None = Field(description="operator commands waiting for it (null: on another node)")
    connection_epoch: int | None = Field(description="the charger's connection number (higher = newer socket)")
    node_id: str = Field(description="the gateway node holding its websocket")


class ConnectorStatusOut(BaseModel):
    evse_id: int
    connector_id: int
    status: str
    error_code: str
    time: UtcTime


class OpenTransactionOut(BaseModel):
    transaction_uid: str
    evse_id: int | None
    connector_id: int | None
    id_token: str | None
    started_at: UtcTime | None
    meter_start_wh: float | None
    charging_state: str | None


class ChargerStateOut(BaseModel):
    id: str
    connection: ConnectionOut | None
    connectors: list[ConnectorStatusOut]
    open_transactions: list[OpenTransactionOut]


class TransactionOut(BaseModel):
    charge_point_id: str
    transaction_uid: str
    evse_id: int | None
    connector_id: int | None
    id_token: str | None
    started_at: UtcTime | None
    stopped_at: UtcTime | None
    meter_start_wh: float | None
    meter_stop_wh: float | None
    energy_wh: float | None
    stop_reason: str | None
    offline: bool
    quality_flags: int


def connection_view(conn: ChargerConnection) -> ConnectionOut:
    return ConnectionOut(charge_point_id=conn.charge_point_id, ocpp_version=conn.ocpp_version,
                         connected_since=conn.connected_at, remote=conn.remote,
                         registration=conn.session.state.registration, last_message_at=conn.last_message_at,
                         commands_waiting=conn.outgoing.outstanding, connection_epoch=conn.connection_epoch,
                         node_id=conn.session.state.node_id)


def entry_view(entry: FleetEntry) -> ConnectionOut:
    return ConnectionOut(charge_point_id=entry.charge_point_id, ocpp_version=entry.ocpp_version,
                         connected_since=entry.connected_at, remote=entry.remote, registration=entry.registration,
                         last_message_at=entry.last_seen_at, commands_waiting=None,
                         connection_epoch=entry.connection_epoch, node_id=entry.node_id)


def _registry_down(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the fleet registry is not reachable: {exc}",
                         headers={"Retry-After": "1"})


async def connected_ids(gateway: Gateway | None) -> set[str]:
    """Chargers connected anywhere in the fleet (for OCPI's UNKNOWN status); this node's own if the
    registry cannot be read (the public feed degrades, it does not fail)."""
    if gateway is None:
        return set()
    own = gateway.live.ids()
    if gateway.fleet is None:
        return own
    try:
        return own | await gateway.fleet.connected_elsewhere()
    except DB_ERRORS:
        return own


def build_live_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["live"])
    db = database(pool)

    @router.get("/connections")
    async def connections() -> list[ConnectionOut]:
        """Chargers with a live websocket on any node (by id)."""
        if gateway is None:
            return []
        listed: dict[str, ConnectionOut] = {c.charge_point_id: connection_view(c) for c in gateway.connections()}
        try:
            others = await gateway.fleet.others() if gateway.fleet is not None else []
        except DB_ERRORS as exc:
            raise _registry_down(exc) from None
        for entry in others:
            mine = listed.get(entry.charge_point_id)
            # Both during a takeover in flight: the newer socket is the charger's connection.
            if mine is None or (mine.connection_epoch or 0) < entry.connection_epoch:
                listed[entry.charge_point_id] = entry_view(entry)
        return sorted(listed.values(), key=lambda c: c.charge_point_id)

    @router.get("/charge-points/{cp_id}/state")
    async def charger_state(cp_id: CpId) -> ChargerStateOut:
        """Connection, latest status of every connector, and open transactions."""
        if not await live_state.charge_point_exists(db(), cp_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        statuses = await live_state.latest_statuses(db(), cp_id)
        open_tx = await live_state.open_transactions(db(), cp_id)
        conn = gateway.live.get(cp_id) if gateway is not None else None
        connection = connection_view(conn) if conn else None
        if connection is None and gateway is not None and gateway.fleet is not None:
            try:
                entry = await gateway.fleet.lookup(cp_id)
            except DB_ERRORS as exc:
                raise _registry_down(exc) from None
            connection = entry_view(entry) if entry is not None and entry.node_id != gateway.fleet.node_id \
                else None
        return ChargerStateOut(id=cp_id, connection=connection,
                               connectors=[ConnectorStatusOut.model_validate(r) for r in statuses],
                               open_transactions=[OpenTransactionOut.model_validate(r) for r in open_tx])

    @router.get("/transactions")
    async def transactions(open_only: bool = False, limit: Annotated[int, Field(ge=1, le=1000)] = 100,
                           charge_point_id: str | None = None) -> list[TransactionOut]:
        """Recent sessions (newest first)."""
        rows = await live_state.recent_transactions(db(), charge_point_id=charge_point_id, open_only=open_only,
                                                    limit=limit)
        return [TransactionOut.model_validate(r) for r in rows]

    return router
