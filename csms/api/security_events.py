"""Security events the chargers reported (SecurityEventNotification, 2.0.1 A04; 1.6 Security Whitepaper §2.7),
newest first, filtered, in bounded pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query
from pydantic import AliasChoices, BaseModel, Field

from csms.api.common import UtcTime, database
from csms.ocpp.identity import MAX_ID_LENGTH
from csms.store.security_events import MAX_PAGE, query_events


class SecurityEventOut(BaseModel):
    event_id: int = Field(validation_alias=AliasChoices("event_id", "id"))
    charge_point_id: str
    type: str
    occurred_at: UtcTime = Field(description="the charger's timestamp (the receive time when implausible: flags)")
    tech_info: str | None
    critical: bool = Field(description="marked critical in OCPP 2.0.1 Part 2 Appendix 1")
    flags: int
    ocpp_version: str
    received_at: UtcTime


class SecurityEventPageOut(BaseModel):
    events: list[SecurityEventOut]
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page; null: no more")


def build_security_events_router(*, pool: asyncpg.Pool | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["security events"])
    db = database(pool)

    @router.get("/security-events")
    async def security_events(
            charge_point_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_LENGTH)] = None,
            type: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
            since: Annotated[datetime | None, Query(description="occurred at or after (RFC 3339)")] = None,
            critical: bool | None = None,
            before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> SecurityEventPageOut:
        """Stored security events, newest first; ``before_id`` pages back. A ``since`` without offset is UTC."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        page = await query_events(db(), charge_point_id=charge_point_id, event_type=type, since=since,
                                  critical=critical, before_id=before_id, limit=limit)
        return SecurityEventPageOut(events=[SecurityEventOut(**e) for e in page.events],
                                    next_before_id=page.next_before_id)

    return router
