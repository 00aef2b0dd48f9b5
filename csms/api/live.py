"""Live state: which chargers are connected, what each is doing, recent sessions."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from csms.api.common import CpId, UtcTime, database
from csms.gateway.connection import ChargerConnection
from csms.gateway.server import Gateway
from csms.store import live_state


class ConnectionOut(BaseModel):
    charge_point_id: str
    ocpp_version: str
    connected_since: UtcTime
    remote: str = Field(description="the charger's IP address")
    registration: str | None = Field(description="what its last BootNotification was answered")
    last_message_at: UtcTime | None
    commands_waiting: int
    connection_epoch: int | None = Field(description="the charger's connection number (higher = newer socket)")


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
                         commands_waiting=conn.outgoing.outstanding, connection_epoch=conn.connection_epoch)


def build_live_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["live"])
    db = database(pool)

    @router.get("/connections")
    async def connections() -> list[ConnectionOut]:
        """Chargers with a live websocket on this node."""
        return [connection_view(c) for c in gateway.connections()] if gateway is not None else []

    @router.get("/charge-points/{cp_id}/state")
    async def charger_state(cp_id: CpId) -> ChargerStateOut:
        """Connection, latest status of every connector, and open transactions."""
        if not await live_state.charge_point_exists(db(), cp_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        statuses = await live_state.latest_statuses(db(), cp_id)
        open_tx = await live_state.open_transactions(db(), cp_id)
        conn = gateway.live.get(cp_id) if gateway is not None else None
        return ChargerStateOut(id=cp_id, connection=connection_view(conn) if conn else None,
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
