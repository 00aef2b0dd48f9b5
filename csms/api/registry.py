"""The registry over HTTP: locations, charge points, id tokens, admission."""

from __future__ import annotations

import functools
import zoneinfo
from datetime import date, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, HTTPException, status
from pydantic import BaseModel, Field, field_validator

from csms.api.common import CHARGE_POINT_ID_PATTERN, CpId, UtcTime, database
from csms.gateway.fleet import DB_ERRORS
from csms.gateway.server import Gateway
from csms.ocpp.identity import MAX_ID_LENGTH
from csms.security.credentials import SLOW_HASH_WARNING
from csms.security.secret import CredentialKeyError
from csms.store import countries, live_state
from csms.store.chargers import set_admission
from csms.store.registry import (
    UNSET,
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    RegistryError,
    UnknownLocationError,
    add_charge_point,
    add_id_token,
    upsert_location,
)

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
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=CHARGE_POINT_ID_PATTERN)
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
    connected: bool = Field(description="has a live websocket on any node")


class AdmissionOut(BaseModel):
    id: str
    admission: Literal["accept", "pending", "reject"]


class IdTokenOut(BaseModel):
    id_token: str
    status: str


def build_registry_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["registry"])
    db = database(pool)

    @router.get("/charge-points")
    async def charge_points() -> list[ChargePointOut]:
        """Registered charge points with their last boot and whether they are connected (to any node)."""
        live_ids = gateway.live.ids() if gateway is not None else set()
        if gateway is not None and gateway.fleet is not None:
            try:
                live_ids |= await gateway.fleet.connected_elsewhere()
            except DB_ERRORS as exc:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the fleet registry is not reachable: "
                                    f"{exc}", headers={"Retry-After": "1"}) from None
        return [ChargePointOut.model_validate({**r, "connected": r["id"] in live_ids})
                for r in await live_state.list_charge_points(db())]

    @router.post("/charge-points", status_code=status.HTTP_201_CREATED)
    async def register_charge_point(body: ChargePointIn) -> dict[str, Any]:
        """Register a charge point, or change the fields given of an existing one (the others are kept); a
        generated password is returned once, only its HMAC is kept. A password given in the body is stored as
        Argon2id and answered with a ``warning``."""
        evses = None if body.evses is None else tuple(
            EvseSpec(**_given(e, skip=("connectors",)),
                     connectors=UNSET if e.connectors is None else tuple(ConnectorSpec(**_given(c))
                                                                         for c in e.connectors))
            for e in body.evses)
        spec = ChargePointSpec(**_given(body, skip=("evses",)), evses=UNSET if evses is None else evses)
        try:
            generated = await add_charge_point(db(), spec,
                                               credentials=gateway.credentials if gateway is not None else None)
        except (asyncpg.ForeignKeyViolationError, UnknownLocationError):
            raise HTTPException(status.HTTP_400_BAD_REQUEST,
                                f"unknown location {body.location_id}") from None
        except RegistryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except CredentialKeyError as exc:   # this node's secret is not the database's: nothing was stored
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
        if gateway is not None:
            gateway.forget_credentials(body.id)
        answer: dict[str, Any] = {"id": body.id}
        if generated:
            answer["password"] = generated
        if body.password is not None:   # stored as Argon2id: slow at every first login (csms_chargers_slow_hash)
            answer["warning"] = SLOW_HASH_WARNING
        return answer

    @router.post("/charge-points/{cp_id}/admission")
    async def admission(cp_id: CpId, admission: Annotated[Literal["accept", "pending", "reject"],
                                                          Body(embed=True)]) -> AdmissionOut:
        """What the next BootNotification of this charger is answered (Accepted/Pending/Rejected)."""
        if not await set_admission(db(), cp_id, admission):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        return AdmissionOut(id=cp_id, admission=admission)

    @router.post("/locations", status_code=status.HTTP_201_CREATED)
    async def register_location(body: LocationIn) -> dict[str, Any]:
        """Create a location, or change the fields given of an existing one (the others are kept)."""
        try:
            saved = await upsert_location(db(), LocationSpec(**_given(body)))
        except RegistryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return {"id": body.id, "created": saved.created, "changed": list(saved.changed)}

    @router.post("/id-tokens", status_code=status.HTTP_201_CREATED)
    async def register_id_token(body: IdTokenIn) -> IdTokenOut:
        await add_id_token(db(), body.id_token, status=body.status, token_type=body.token_type,
                           expiry=body.expiry)
        return IdTokenOut(id_token=body.id_token, status=body.status)

    return router
