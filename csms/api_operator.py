"""Operator API (bearer token): registry, live state, and commands to chargers."""

from __future__ import annotations

import functools
import itertools
import zoneinfo
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, HTTPException, Path, status
from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema, field_validator

from csms import commands, countries
from csms.connection import ChargerCallError
from csms.errors import ChargerBusyError, ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.gateway import Gateway, LiveConnection
from csms.registry import (
    UNSET,
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    RegistryError,
    UnknownLocationError,
    add_charge_point,
    add_id_token,
    set_admission,
    upsert_location,
)

CpId = Annotated[str, Path(min_length=1, max_length=48, pattern=r"^[^:/]+$")]
_remote_start_ids = itertools.count(1)


# Registry bodies: a field left out of the request keeps the stored value of an existing id (a new one
# gets the default in its description); ``null`` clears a nullable field. See ``_given``.
# ``operational_since`` is ``datetime | date`` in that order: pydantic's lax ``date`` would also take
# "2025-01-01T00:00:00Z" and drop its offset; a bare date becomes a naive midnight, station-local.
_SINCE_DOC = ("when the port(s) entered service (NEVI counts uptime once it is 12 months before the window); "
              "a date or a time without offset is station-local")


class ConnectorIn(BaseModel):
    connector_id: int = Field(1, ge=1, le=64)
    standard: str | None = Field(None, max_length=40, description=(
        "OCPI ConnectorType; default by power type and the location's country: DC IEC_62196_T1_COMBO in "
        "USA/CAN/MEX/KOR, CHADEMO in JPN, GBT_DC in CHN, IEC_62196_T2_COMBO elsewhere; AC IEC_62196_T1 "
        "there, GBT_AC in CHN, IEC_62196_T2 elsewhere"))
    format: Literal["SOCKET", "CABLE"] | None = Field(None, description="default CABLE for DC and Type 1, "
                                                                         "else SOCKET")
    power_type: Literal["AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC"] | None = Field(
        None, description="default AC_3_PHASE")
    max_voltage_v: int | None = Field(None, ge=1, le=2000, description="default 1000 for DC, else 400")
    max_amperage_a: int | None = Field(None, ge=1, le=5000, description="default from rated power")
    rated_power_w: float | None = Field(None, gt=0, le=5_000_000, description="default 22000")


class EvseIn(BaseModel):
    evse_id: int = Field(ge=1, le=64)
    connectors: list[ConnectorIn] | None = Field(None, min_length=1, max_length=8,
                                                 description="left out: kept (a new EVSE gets one connector)")
    emi3_id: str | None = Field(None, max_length=48)
    federally_funded: bool | None = Field(None, description="default false")
    operational_since: datetime | date | None = Field(None, description=_SINCE_DOC)


class ChargePointIn(BaseModel):
    id: str = Field(min_length=1, max_length=48, pattern=r"^[^:/]+$")
    location_id: str | None = Field(None, max_length=36)
    evses: list[EvseIn] | None = Field(None, min_length=1, max_length=64,
                                       description="added or updated; left out: kept (a new charger gets EVSE 1)")
    password: str | None = Field(None, min_length=16, max_length=64,
                                 description="left out: kept, or generated when the charger has none")
    security_profile: int | None = Field(None, ge=0, le=3, description="default 1")
    admission: Literal["accept", "pending", "reject"] | None = Field(None, description="default accept")
    tolerant: bool | None = Field(None, description="default false")


class LocationIn(BaseModel):
    id: str = Field(min_length=1, max_length=36)
    name: str | None = Field(None, min_length=1, max_length=255, description="required for a new location")
    address: str | None = Field(None, max_length=255, description="default empty")
    city: str | None = Field(None, max_length=45, description="default empty")
    postal_code: str | None = Field(None, max_length=10)
    country: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3; default USA")
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    time_zone: str | None = Field(None, max_length=64, description="IANA time zone name, e.g. Asia/Kolkata; "
                                                                   "default UTC")
    is_public: bool | None = Field(None, description="published in the open-data feed; default false")
    operational_since: datetime | date | None = Field(None, description=_SINCE_DOC)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        # Reports cut days, weeks and months in this zone: an unknown name must not get in.
        if value is not None and value not in _zones():
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value is not None and not countries.is_alpha3(value):
            raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-3 country code")
        return value


_NULLABLE = frozenset({"location_id", "emi3_id", "operational_since", "postal_code", "latitude", "longitude"})


def _given(body: BaseModel, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields the request gave (pydantic's ``model_fields_set``); the others stay UNSET in the spec,
    so that an existing id keeps them. ``null`` clears a nullable field and means "left out" otherwise."""
    return {k: getattr(body, k) for k in body.model_fields_set
            if k not in skip and (k in _NULLABLE or getattr(body, k) is not None)}


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


# --- responses: one type per field across the API (tests/test_api_types.py checks /openapi.json)


def utc_text(moment: datetime) -> str:
    """The API's one time format: UTC, RFC 3339 with "Z", whole seconds (as the reporting API)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


UtcTime = Annotated[datetime, PlainSerializer(utc_text, return_type=str),
                    WithJsonSchema({"type": "string", "format": "date-time",
                                    "description": "UTC, e.g. 2025-01-31T23:59:59Z"}, mode="serialization")]


class ConnectionOut(BaseModel):
    charge_point_id: str
    ocpp_version: str
    connected_since: UtcTime
    remote: str = Field(description="the charger's IP address")
    registration: str | None = Field(description="what its last BootNotification was answered")
    last_message_at: UtcTime | None
    commands_waiting: int
    connection_epoch: int | None = Field(description="the charger's connection number (higher = newer socket)")


class ChargePointOut(BaseModel):
    id: str
    location_id: str | None
    vendor: str | None
    model: str | None
    serial_number: str | None
    firmware_version: str | None
    ocpp_version: str | None
    admission: str
    registration_status: str
    last_boot_at: UtcTime | None
    last_seen_at: UtcTime | None
    connected: bool = Field(description="has a live websocket on this node")


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


class CommandOut(BaseModel):
    charge_point_id: str
    action: str
    ocpp_version: str
    response: dict[str, Any] = Field(description="the charger's CALLRESULT payload, as received")


class AdmissionOut(BaseModel):
    id: str
    admission: Literal["accept", "pending", "reject"]


class IdTokenOut(BaseModel):
    id_token: str
    status: str


def build_operator_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    def db() -> asyncpg.Pool:
        if pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no database on this role")
        return pool

    async def live(cp_id: str) -> LiveConnection:
        # A charger mid-handshake is waited for (at most command_connect_wait_s); an offline one
        # fails at once: a command to an offline charger is never queued.
        conn = await gateway.live_connection(cp_id) if gateway is not None else None
        if conn is None or conn.charger is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"charge point {cp_id} is not connected to this node")
        return conn

    async def send(cp_id: str, action: str, payload: dict[str, Any]) -> CommandOut:
        conn = await live(cp_id)
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
        except ChargerBusyError as exc:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from None
        except ChargerCommandError as exc:
            # Any other failure to deliver: the charger is not reachable for this command.
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return CommandOut(charge_point_id=cp_id, action=action, ocpp_version=conn.ocpp_version, response=response)

    @router.post("/charge-points/{cp_id}/ocpp/{action}", tags=["commands"])
    async def ocpp_command(cp_id: CpId, action: Annotated[str, Path(max_length=64)],
                           payload: Annotated[dict[str, Any], Body()]) -> CommandOut:
        """Send any CSMS-initiated OCPP call of the charger's version; the charger's answer is returned."""
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/remote-start", tags=["commands"])
    async def remote_start(cp_id: CpId, body: RemoteStartIn) -> CommandOut:
        action, payload = commands.remote_start((await live(cp_id)).ocpp_version, evse_id=body.evse_id,
                                                id_token=body.id_token, remote_start_id=next(_remote_start_ids))
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/remote-stop", tags=["commands"])
    async def remote_stop(cp_id: CpId, body: RemoteStopIn) -> CommandOut:
        try:
            action, payload = commands.remote_stop((await live(cp_id)).ocpp_version,
                                                   transaction_id=body.transaction_id)
        except commands.CommandRefused as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/reset", tags=["commands"])
    async def reset(cp_id: CpId, body: ResetIn) -> CommandOut:
        action, payload = commands.reset((await live(cp_id)).ocpp_version, hard=body.hard)
        return await send(cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/change-availability", tags=["commands"])
    async def change_availability(cp_id: CpId, body: AvailabilityIn) -> CommandOut:
        action, payload = commands.change_availability((await live(cp_id)).ocpp_version, evse_id=body.evse_id,
                                                       operative=body.operative)
        return await send(cp_id, action, payload)

    @router.get("/connections", tags=["live"])
    async def connections() -> list[ConnectionOut]:
        """Chargers with a live websocket on this node."""
        if gateway is None:
            return []
        return [_connection_view(c) for c in gateway.registry.all()]

    @router.get("/charge-points", tags=["registry"])
    async def charge_points() -> list[ChargePointOut]:
        """Registered charge points with their last boot and whether they are connected here."""
        rows = await db().fetch(
            "SELECT id, location_id, vendor, model, serial_number, firmware_version, ocpp_version, admission, "
            "registration_status, last_boot_at, last_seen_at FROM charge_points ORDER BY id LIMIT 10000")
        live_ids = {c.charge_point_id for c in gateway.registry.all()} if gateway else set()
        return [ChargePointOut.model_validate({**dict(r), "connected": r["id"] in live_ids}) for r in rows]

    @router.post("/charge-points", tags=["registry"], status_code=status.HTTP_201_CREATED)
    async def register_charge_point(body: ChargePointIn) -> dict[str, Any]:
        """Register a charge point, or change the fields given of an existing one (the others are kept); a
        generated password is returned once, only its hash is kept."""
        evses = None if body.evses is None else tuple(
            EvseSpec(**_given(e, skip=("connectors",)),
                     connectors=UNSET if e.connectors is None else tuple(ConnectorSpec(**_given(c))
                                                                         for c in e.connectors))
            for e in body.evses)
        spec = ChargePointSpec(**_given(body, skip=("evses",)), evses=UNSET if evses is None else evses)
        try:
            generated = await add_charge_point(db(), spec)
        except (asyncpg.ForeignKeyViolationError, UnknownLocationError):
            raise HTTPException(status.HTTP_400_BAD_REQUEST,
                                f"unknown location {body.location_id}") from None
        except RegistryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        if gateway is not None:
            gateway.forget_credentials(body.id)
        return {"id": body.id, "password": generated} if generated else {"id": body.id}

    @router.post("/charge-points/{cp_id}/admission", tags=["registry"])
    async def admission(cp_id: CpId, admission: Annotated[Literal["accept", "pending", "reject"],
                                                          Body(embed=True)]) -> AdmissionOut:
        """What the next BootNotification of this charger is answered (Accepted/Pending/Rejected)."""
        if not await set_admission(db(), cp_id, admission):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        return AdmissionOut(id=cp_id, admission=admission)

    @router.get("/charge-points/{cp_id}/state", tags=["live"])
    async def charger_state(cp_id: CpId) -> ChargerStateOut:
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
        return ChargerStateOut(id=cp_id, connection=_connection_view(conn) if conn else None,
                               connectors=[ConnectorStatusOut.model_validate(dict(r)) for r in statuses],
                               open_transactions=[OpenTransactionOut.model_validate(dict(r)) for r in open_tx])

    @router.get("/transactions", tags=["live"])
    async def transactions(open_only: bool = False, limit: Annotated[int, Field(ge=1, le=1000)] = 100,
                           charge_point_id: str | None = None) -> list[TransactionOut]:
        """Recent sessions (newest first)."""
        rows = await db().fetch(
            "SELECT charge_point_id, transaction_uid, evse_id, connector_id, id_token, started_at, stopped_at, "
            "meter_start_wh, meter_stop_wh, energy_wh, stop_reason, offline, quality_flags FROM transactions "
            "WHERE ($1::text IS NULL OR charge_point_id = $1) AND (NOT $2 OR stopped_at IS NULL) "
            "ORDER BY COALESCE(started_at, stopped_at) DESC NULLS LAST LIMIT $3",
            charge_point_id, open_only, limit)
        return [TransactionOut.model_validate(dict(r)) for r in rows]

    @router.post("/locations", tags=["registry"], status_code=status.HTTP_201_CREATED)
    async def register_location(body: LocationIn) -> dict[str, Any]:
        """Create a location, or change the fields given of an existing one (the others are kept)."""
        try:
            saved = await upsert_location(db(), LocationSpec(**_given(body)))
        except RegistryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return {"id": body.id, "created": saved.created, "changed": list(saved.changed)}

    @router.post("/id-tokens", tags=["registry"], status_code=status.HTTP_201_CREATED)
    async def register_id_token(body: IdTokenIn) -> IdTokenOut:
        await add_id_token(db(), body.id_token, status=body.status, token_type=body.token_type,
                           expiry=body.expiry)
        return IdTokenOut(id_token=body.id_token, status=body.status)

    return router


def _connection_view(conn: LiveConnection) -> ConnectionOut:
    state = conn.charger.session.state if conn.charger else None
    return ConnectionOut(charge_point_id=conn.charge_point_id, ocpp_version=conn.ocpp_version,
                         connected_since=conn.connected_at, remote=conn.remote,
                         registration=state.registration if state else None,
                         last_message_at=conn.charger.last_message_at if conn.charger else None,
                         commands_waiting=conn.charger.outgoing.outstanding if conn.charger else 0,
                         connection_epoch=conn.connection_epoch)
