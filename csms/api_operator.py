"""Operator API (bearer token): registry, live state, and commands to chargers."""

from __future__ import annotations

import functools
import itertools
import zoneinfo
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, HTTPException, Path, status
from pydantic import BaseModel, Field, field_validator

from csms import commands
from csms.connection import ChargerCallError
from csms.errors import ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.gateway import Gateway, LiveConnection
from csms.registry import (
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    add_charge_point,
    add_id_token,
    set_admission,
    upsert_location,
)

CpId = Annotated[str, Path(min_length=1, max_length=48, pattern=r"^[^:/]+$")]
_remote_start_ids = itertools.count(1)


class ConnectorIn(BaseModel):
    connector_id: int = Field(1, ge=1, le=64)
    standard: str = Field("IEC_62196_T2", max_length=40)
    format: Literal["SOCKET", "CABLE"] = "SOCKET"
    power_type: Literal["AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC"] = "AC_3_PHASE"
    max_voltage_v: int = Field(400, ge=1, le=2000)
    max_amperage_a: int = Field(32, ge=1, le=5000)
    rated_power_w: float = Field(22000, gt=0, le=5_000_000)


class EvseIn(BaseModel):
    evse_id: int = Field(ge=1, le=64)
    connectors: list[ConnectorIn] = Field(default_factory=lambda: [ConnectorIn()], min_length=1, max_length=8)
    emi3_id: str | None = Field(None, max_length=48)
    federally_funded: bool = False


class ChargePointIn(BaseModel):
    id: str = Field(min_length=1, max_length=48, pattern=r"^[^:/]+$")
    location_id: str | None = Field(None, max_length=36)
    evses: list[EvseIn] = Field(default_factory=lambda: [EvseIn(evse_id=1)], min_length=1, max_length=64)
    password: str | None = Field(None, min_length=16, max_length=64)
    security_profile: int = Field(1, ge=0, le=3)
    admission: Literal["accept", "pending", "reject"] = "accept"
    tolerant: bool = False


class LocationIn(BaseModel):
    id: str = Field(min_length=1, max_length=36)
    name: str = Field(min_length=1, max_length=255)
    address: str = Field("", max_length=255)
    city: str = Field("", max_length=45)
    postal_code: str | None = Field(None, max_length=10)
    country: str = Field("USA", pattern=r"^[A-Z]{3}$")
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    time_zone: str = Field("UTC", max_length=64, description="IANA time zone name, e.g. Asia/Kolkata")
    is_public: bool = False
    operational_since: datetime | None = None

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # Reports cut days, weeks and months in this zone: an unknown name must not get in.
        if value not in _zones():
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class IdTokenIn(BaseModel):
    id_token: str = Field(min_length=1, max_length=36)
    status: Literal["Accepted", "Blocked", "Expired", "Invalid"] = "Accepted"
    token_type: str = Field("ISO14443", max_length=20)
    expiry: datetime | None = None


class RemoteStartIn(BaseModel):
    evse_id: int = Field(1, ge=1, le=64)
    id_token: str = Field(min_length=1, max_length=36)


class RemoteStopIn(BaseModel):
    transaction_id: str = Field(min_length=1, max_length=36)


class ResetIn(BaseModel):
    hard: bool = False


class AvailabilityIn(BaseModel):
    evse_id: int = Field(0, ge=0, le=64)
    operative: bool


def build_operator_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    def db() -> asyncpg.Pool:
        if pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no database on this role")
        return pool

    def live(cp_id: str) -> LiveConnection:
        conn = gateway.registry.get(cp_id) if gateway is not None else None
        if conn is None or conn.charger is None:
            # Fails at once: a command to an offline charger is never queued.
            raise HTTPException(status.HTTP_409_CONFLICT, f"charge point {cp_id} is not connected to this node")
        return conn

    async def send(cp_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        conn = live(cp_id)
        assert conn.charger is not None
        state = conn.charger.session.state
        try:
            commands.check_command(version=conn.ocpp_version, registration=state.registration, action=action,
                                   payload=payload)
            if action in ("TriggerMessage", "ExtendedTriggerMessage"):
                # Messages we asked for are allowed even before Accepted (R33).
                state.triggered.add(str(payload.get("requestedMessage", "")))
            response = await conn.charger.outgoing.call(action, payload)
        except commands.CommandRefused as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except ChargerOfflineError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except ChargerTimeoutError as exc:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(exc)) from None
        except ChargerCallError as exc:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                                {"error": exc.code, "description": exc.description}) from None
        except ChargerCommandError as exc:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from None
        return {"charge_point_id": cp_id, "action": action, "ocpp_version": conn.ocpp_version,
                "response": response}

    @router.post("/charge-points/{cp_id}/ocpp/{action}", tags=["commands"])
    async def ocpp_command(cp_id: CpId, action: Annotated[str, Path(max_length=64)],
                           payload: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Send any CSMS-initiated OCPP call of the charger's version; the charger's answer is returned."""
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/remote-start", tags=["commands"])
    async def remote_start(cp_id: CpId, body: RemoteStartIn) -> dict[str, Any]:
        action, payload = commands.remote_start(live(cp_id).ocpp_version, evse_id=body.evse_id,
                                                id_token=body.id_token, remote_start_id=next(_remote_start_ids))
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/remote-stop", tags=["commands"])
    async def remote_stop(cp_id: CpId, body: RemoteStopIn) -> dict[str, Any]:
        try:
            action, payload = commands.remote_stop(live(cp_id).ocpp_version, transaction_id=body.transaction_id)
        except commands.CommandRefused as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/reset", tags=["commands"])
    async def reset(cp_id: CpId, body: ResetIn) -> dict[str, Any]:
        action, payload = commands.reset(live(cp_id).ocpp_version, hard=body.hard)
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/change-availability", tags=["commands"])
    async def change_availability(cp_id: CpId, body: AvailabilityIn) -> dict[str, Any]:
        action, payload = commands.change_availability(live(cp_id).ocpp_version, evse_id=body.evse_id,
                                                       operative=body.operative)
        return await send(cp_id, action, payload)

    @router.get("/connections", tags=["live"])
    async def connections() -> list[dict[str, Any]]:
        """Chargers with a live websocket on this node."""
        if gateway is None:
            return []
        return [_connection_view(c) for c in gateway.registry.all()]

    @router.get("/charge-points", tags=["registry"])
    async def charge_points() -> list[dict[str, Any]]:
        """Registered charge points with their last boot and whether they are connected here."""
        rows = await db().fetch(
            "SELECT id, location_id, vendor, model, serial_number, firmware_version, ocpp_version, admission, "
            "registration_status, last_boot_at, last_seen_at FROM charge_points ORDER BY id LIMIT 10000")
        live_ids = {c.charge_point_id for c in gateway.registry.all()} if gateway else set()
        return [{**dict(r), "connected": r["id"] in live_ids} for r in rows]

    @router.post("/charge-points", tags=["registry"], status_code=status.HTTP_201_CREATED)
    async def register_charge_point(body: ChargePointIn) -> dict[str, Any]:
        """Register or update a charge point; a generated password is returned once, only its hash is kept."""
        spec = ChargePointSpec(
            id=body.id, location_id=body.location_id, password=body.password,
            security_profile=body.security_profile, admission=body.admission, tolerant=body.tolerant,
            evses=tuple(EvseSpec(evse_id=e.evse_id, emi3_id=e.emi3_id, federally_funded=e.federally_funded,
                                 connectors=tuple(ConnectorSpec(**c.model_dump()) for c in e.connectors))
                        for e in body.evses))
        try:
            generated = await add_charge_point(db(), spec)
        except asyncpg.ForeignKeyViolationError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST,
                                f"unknown location {body.location_id}") from None
        if gateway is not None:
            gateway.forget_credentials(body.id)
        return {"id": body.id, "password": generated} if generated else {"id": body.id}

    @router.post("/charge-points/{cp_id}/admission", tags=["registry"])
    async def admission(cp_id: CpId, admission: Annotated[Literal["accept", "pending", "reject"],
                                                          Body(embed=True)]) -> dict[str, Any]:
        """What the next BootNotification of this charger is answered (Accepted/Pending/Rejected)."""
        if not await set_admission(db(), cp_id, admission):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        return {"id": cp_id, "admission": admission}

    @router.get("/charge-points/{cp_id}/state", tags=["live"])
    async def charger_state(cp_id: CpId) -> dict[str, Any]:
        """Connection, latest status of every connector, and open transactions."""
        pool_ = db()
        exists = await pool_.fetchval("SELECT 1 FROM charge_points WHERE id = $1", cp_id)
        if not exists:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        statuses = await pool_.fetch(
            "SELECT DISTINCT ON (evse_id, connector_id) evse_id, connector_id, status, error_code, time "
            "FROM connector_status WHERE charge_point_id = $1 ORDER BY evse_id, connector_id, time DESC", cp_id)
        open_tx = await pool_.fetch(
            "SELECT transaction_uid, evse_id, connector_id, id_token, started_at, meter_start_wh, charging_state "
            "FROM transactions WHERE charge_point_id = $1 AND stopped_at IS NULL ORDER BY started_at", cp_id)
        conn = gateway.registry.get(cp_id) if gateway else None
        return {"id": cp_id, "connection": _connection_view(conn) if conn else None,
                "connectors": [dict(r) for r in statuses], "open_transactions": [dict(r) for r in open_tx]}

    @router.get("/transactions", tags=["live"])
    async def transactions(open_only: bool = False, limit: Annotated[int, Field(ge=1, le=1000)] = 100,
                           charge_point_id: str | None = None) -> list[dict[str, Any]]:
        """Recent sessions (newest first)."""
        rows = await db().fetch(
            "SELECT charge_point_id, transaction_uid, evse_id, connector_id, id_token, started_at, stopped_at, "
            "meter_start_wh, meter_stop_wh, energy_wh, stop_reason, offline, quality_flags FROM transactions "
            "WHERE ($1::text IS NULL OR charge_point_id = $1) AND (NOT $2 OR stopped_at IS NULL) "
            "ORDER BY COALESCE(started_at, stopped_at) DESC NULLS LAST LIMIT $3",
            charge_point_id, open_only, limit)
        return [{**dict(r), "energy_wh": float(r["energy_wh"]) if r["energy_wh"] is not None else None,
                 "meter_start_wh": float(r["meter_start_wh"]) if r["meter_start_wh"] is not None else None,
                 "meter_stop_wh": float(r["meter_stop_wh"]) if r["meter_stop_wh"] is not None else None}
                for r in rows]

    @router.post("/locations", tags=["registry"], status_code=status.HTTP_201_CREATED)
    async def register_location(body: LocationIn) -> dict[str, Any]:
        await upsert_location(db(), LocationSpec(**body.model_dump()))
        return {"id": body.id}

    @router.post("/id-tokens", tags=["registry"], status_code=status.HTTP_201_CREATED)
    async def register_id_token(body: IdTokenIn) -> dict[str, Any]:
        await add_id_token(db(), body.id_token, status=body.status, token_type=body.token_type,
                           expiry=body.expiry)
        return {"id_token": body.id_token, "status": body.status}

    return router


def _connection_view(conn: LiveConnection) -> dict[str, Any]:
    state = conn.charger.session.state if conn.charger else None
    return {"charge_point_id": conn.charge_point_id, "ocpp_version": conn.ocpp_version,
            "connected_since": conn.connected_at.isoformat(), "remote": conn.remote,
            "registration": state.registration if state else None,
            "last_message_at": conn.charger.last_message_at.isoformat() if conn.charger else None,
            "commands_waiting": conn.charger.outgoing.outstanding if conn.charger else 0}
