"""What OCPP 2.1 chargers reported (migration 0011): settlements, DER events, periodic event streams and
their values, battery swaps, priority charging. Newest first; ``limit`` bounds a page (at most 1000) and
``before`` (exclusive, the last row's time) fetches the next one. SQL lives in ``csms.store.ocpp21``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from csms.api.common import CpId, UtcTime, database
from csms.store import live_state, ocpp21

Limit = Annotated[int, Query(ge=1, le=1000, description="rows per page")]
Before = Annotated[datetime | None, Query(description="only rows older than this (the last row's time: next page)")]


class SettlementOut(BaseModel):
    transaction_uid: str = Field(description="the 2.x transactionId; '' when the settlement names none")
    psp_ref: str
    status: str
    amount: float
    settled_at: UtcTime
    status_info: str
    receipt_id: str
    receipt_url: str
    vat_number: str
    vat_company: dict[str, str] | None
    received_at: UtcTime
    transaction_started_at: UtcTime | None = Field(description="the linked transaction, when it is stored")
    transaction_stopped_at: UtcTime | None
    transaction_energy_wh: float | None


class DerEventOut(BaseModel):
    time: UtcTime
    kind: Literal["alarm", "start_stop", "report"]
    control_type: str
    grid_event_fault: str
    alarm_ended: bool | None
    extra_info: str
    control_id: str
    started: bool | None
    superseded_ids: list[str]
    request_id: int | None
    tbc: bool
    controls: dict[str, Any] | None = Field(description="report: the controls as the charger sent them")
    received_at: UtcTime


class PeriodicStreamOut(BaseModel):
    stream_id: int
    variable_monitoring_id: int | None
    interval_s: int | None
    max_values: int | None
    opened_at: UtcTime | None = Field(description="null: closed, but its Open was never received")
    closed_at: UtcTime | None
    stored_values: int
    last_value_at: UtcTime | None


class StreamValueOut(BaseModel):
    time: UtcTime
    value: float | None = Field(description="the value as a number; null when it is not one")
    raw_value: str
    basetime: UtcTime
    seq: int
    pending: int
    received_at: UtcTime


class BatterySwapOut(BaseModel):
    received_at: UtcTime
    request_id: int
    event_type: str
    id_token: str
    id_token_type: str
    evse_id: int
    serial_number: str
    soc: float
    soh: float
    production_date: UtcTime | None
    vendor_info: str


class PriorityChargingOut(BaseModel):
    received_at: UtcTime
    transaction_uid: str
    activated: bool


def build_ocpp21_router(*, pool: asyncpg.Pool | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/charge-points/{cp_id}", tags=["ocpp 2.1"])
    db = database(pool)

    async def known(cp_id: str) -> asyncpg.Pool:
        if not await live_state.charge_point_exists(db(), cp_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no charge point {cp_id}")
        return db()

    @router.get("/settlements")
    async def settlements(cp_id: CpId, transaction_uid: str | None = None, before: Before = None,
                          limit: Limit = 100) -> list[SettlementOut]:
        """Payment terminal settlements (2.1 NotifySettlement) with their transactions."""
        rows = await ocpp21.settlements(await known(cp_id), cp_id, transaction_uid=transaction_uid, before=before,
                                        limit=limit)
        return [SettlementOut.model_validate(r) for r in rows]

    @router.get("/der-events")
    async def der_events(cp_id: CpId, kind: Literal["alarm", "start_stop", "report"] | None = None,
                         before: Before = None, limit: Limit = 100) -> list[DerEventOut]:
        """DER alarms, controls started/stopped, control reports (2.1 NotifyDERAlarm, NotifyDERStartStop,
        ReportDERControl)."""
        rows = await ocpp21.der_events(await known(cp_id), cp_id, kind=kind, before=before, limit=limit)
        return [DerEventOut.model_validate(r) for r in rows]

    @router.get("/periodic-streams")
    async def periodic_streams(cp_id: CpId, open_only: bool = False, limit: Limit = 100) -> list[PeriodicStreamOut]:
        """Periodic event streams the charger opened (2.1 Open/ClosePeriodicEventStream)."""
        rows = await ocpp21.periodic_streams(await known(cp_id), cp_id, open_only=open_only, limit=limit)
        return [PeriodicStreamOut.model_validate(r) for r in rows]

    @router.get("/periodic-streams/{stream_id}/values")
    async def stream_values(cp_id: CpId, stream_id: Annotated[int, Field(ge=0, le=2**31 - 1)],
                            before: Before = None, limit: Limit = 100) -> list[StreamValueOut]:
        """The values of one stream (2.1 NotifyPeriodicEventStream), newest first."""
        rows = await ocpp21.stream_values(await known(cp_id), cp_id, stream_id, before=before, limit=limit)
        return [StreamValueOut.model_validate(r) for r in rows]

    @router.get("/battery-swaps")
    async def battery_swaps(cp_id: CpId, before: Before = None, limit: Limit = 100) -> list[BatterySwapOut]:
        """Batteries swapped in or out (2.1 BatterySwap), one row per battery."""
        rows = await ocpp21.battery_swaps(await known(cp_id), cp_id, before=before, limit=limit)
        return [BatterySwapOut.model_validate(r) for r in rows]

    @router.get("/priority-charging")
    async def priority_charging(cp_id: CpId, before: Before = None, limit: Limit = 100) -> list[PriorityChargingOut]:
        """Priority charging activated / ended per transaction (2.1 NotifyPriorityCharging)."""
        rows = await ocpp21.priority_charging(await known(cp_id), cp_id, before=before, limit=limit)
        return [PriorityChargingOut.model_validate(r) for r in rows]

    return router
