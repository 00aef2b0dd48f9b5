"""Key rotation over HTTP (issue 14 item 3; 2.0.1 A01): one charger now, or the fleet as a campaign.

* ``POST /charge-points/{id}/credentials/rotate``: a new generated password is sent (1.6 ChangeConfiguration
  AuthorizationKey, 2.x SetVariables SecurityCtrlr.BasicAuthPassword) and the rotation is answered as it stands
  after the charger's answer: ``accepted`` (both keys work until its first login with the new one, then
  ``completed``), ``rejected``, ``timeout`` or ``error`` (the old key stays). 409 while the charger has a
  rotation in progress, or when it is connected nowhere (nothing is recorded then).
* ``GET /charge-points/{id}/credentials/rotations``: its rotations with their audit trail.
* ``POST /credentials/rotations``: a campaign over all chargers, a list, or one OCPP version, sent at
  ``rotation_campaign_per_s`` at most; ``GET /credentials/rotations[/{id}]``: progress (rotations per state);
  ``POST /credentials/rotations/{id}/cancel``. One campaign runs at a time (409).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import AliasChoices, BaseModel, Field

from csms.api.common import CHARGE_POINT_ID_PATTERN, CpId, UtcTime, database
from csms.gateway.node_messages import RemoteNodeError
from csms.gateway.rotation import ChargerNotConnected, KeyRotation
from csms.gateway.server import Gateway
from csms.ocpp.identity import MAX_ID_LENGTH
from csms.security.secret import CredentialKeyError
from csms.store import rotation as store

_NAME = Field("api", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$",
              description="who asks (recorded in the audit trail as operator:<name>)")


class RotateIn(BaseModel):
    requested_by: str = _NAME


class RotationEvent(BaseModel):
    step: str
    at: str = Field(description="UTC, e.g. 2025-01-31T23:59:59Z")
    actor: str
    detail: str


class RotationOut(BaseModel):
    rotation_id: int = Field(validation_alias=AliasChoices("rotation_id", "id"))
    charge_point_id: str
    campaign_id: int | None
    state: Literal["queued", "sending", "sent", "accepted", "completed", "rejected", "timeout", "error",
                   "offline", "cancelled"]
    ocpp_version: str | None
    charger_status: str | None = Field(description="the charger's answer: Accepted, Rejected, RebootRequired, …")
    detail: str
    requested_by: str
    requested_at: UtcTime
    sent_at: UtcTime | None
    answered_at: UtcTime | None
    completed_at: UtcTime | None = Field(description="the first login with the new key: the old one retired")
    events: list[RotationEvent]


class CampaignIn(BaseModel):
    all: bool = Field(False, description="every charger with a Basic-auth password")
    charge_point_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH,
                                                pattern=CHARGE_POINT_ID_PATTERN)]] | None = Field(
        None, min_length=1, max_length=100_000)
    ocpp_version: Literal["1.6", "2.0.1", "2.1"] | None = Field(None, description="the version it last booted with")
    rate_per_s: float | None = Field(None, gt=0, le=10_000,
                                     description="rotations sent per second; at most rotation_campaign_per_s")
    requested_by: str = _NAME


class CampaignOut(BaseModel):
    campaign_id: int = Field(validation_alias=AliasChoices("campaign_id", "id"))
    state: Literal["running", "done", "cancelled"]
    selector: dict[str, Any]
    rate_per_s: float | None
    requested_by: str
    requested_at: UtcTime
    finished_at: UtcTime | None
    skipped: int = Field(description="selected chargers that had a rotation in progress (not rotated)")
    total: int
    counts: dict[str, int] = Field(description="rotations per state")


def build_credentials_router(*, pool: asyncpg.Pool | None, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["credentials"])
    db = database(pool)

    def rotator() -> KeyRotation:
        if gateway is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this process has no OCPP gateway")
        return KeyRotation(pool=db(), gateway=gateway, secret=gateway.credentials)

    @router.post("/charge-points/{cp_id}/credentials/rotate")
    async def rotate(cp_id: CpId, body: Annotated[RotateIn | None, Body()] = None) -> RotationOut:
        """Rotate the charger's Basic-auth password now; answered after the charger's answer (at most
        call_timeout_s). The new password is never shown: only the charger and the HMAC know it."""
        who = f"operator:{(body or RotateIn()).requested_by}"
        try:
            found = await rotator().rotate(cp_id, requested_by=who)
        except store.UnknownChargePoint as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except store.RotationRefused as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except store.RotationConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, {"detail": str(exc), "rotation_id": exc.active_id}) \
                from None
        except ChargerNotConnected as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except (RemoteNodeError, CredentialKeyError) as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}) \
                from None
        return RotationOut.model_validate(found)

    @router.get("/charge-points/{cp_id}/credentials/rotations")
    async def rotations(cp_id: CpId, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[RotationOut]:
        """The charger's rotations, newest first, each with its audit trail (who did what when)."""
        return [RotationOut.model_validate(r) for r in await store.rotations_of(db(), cp_id, limit=limit)]

    @router.post("/credentials/rotations", status_code=status.HTTP_202_ACCEPTED)
    async def start_campaign(body: CampaignIn) -> CampaignOut:
        """Queue a rotation for every selected charger (``all``, ``charge_point_ids`` and/or ``ocpp_version``;
        ``all`` must be said explicitly); the nodes send them at the bounded rate."""
        if not body.all and body.charge_point_ids is None and body.ocpp_version is None:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "select chargers: all=true, charge_point_ids or "
                                                             "ocpp_version")
        try:
            campaign_id = await store.create_campaign(
                db(), charge_point_ids=body.charge_point_ids, ocpp_version=body.ocpp_version,
                rate_per_s=body.rate_per_s, requested_by=f"operator:{body.requested_by}")
        except store.RotationConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, {"detail": str(exc), "campaign_id": exc.active_id}) \
                from None
        except store.RotationRefused as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        return await _campaign(campaign_id)

    @router.get("/credentials/rotations")
    async def list_campaigns(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[CampaignOut]:
        return [CampaignOut.model_validate(c) for c in await store.campaigns(db(), limit=limit)]

    @router.get("/credentials/rotations/{campaign_id}")
    async def campaign(campaign_id: int) -> CampaignOut:
        """A campaign's progress: rotations per state; ``done`` once nothing is left to send or answer."""
        return await _campaign(campaign_id)

    @router.post("/credentials/rotations/{campaign_id}/cancel")
    async def cancel(campaign_id: int, requested_by: Annotated[str, Body(embed=True)] = "api") -> CampaignOut:
        """Stop a running campaign: its queued rotations are cancelled; those already sent run to their end."""
        if not await store.cancel_campaign(db(), campaign_id, actor=f"operator:{requested_by[:64]}"):
            raise HTTPException(status.HTTP_409_CONFLICT, f"campaign {campaign_id} is not running")
        return await _campaign(campaign_id)

    async def _campaign(campaign_id: int) -> CampaignOut:
        found = await store.campaigns(db(), campaign_id=campaign_id, limit=1)
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id}")
        return CampaignOut.model_validate(found[0])

    return router
