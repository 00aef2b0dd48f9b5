"""OCPP 2.1 operator shortcuts: tariffs for local cost calculation and DER controls.

Typed endpoints for the common tasks; each maps onto one 2.1 message (``csms.ocpp.commands``),
is validated against its 2.1 request schema before it is sent and returns the charger's
answer, validated against the response schema, exactly as ``POST …/ocpp/{Action}`` would.
On a 1.6 or 2.0.1 charger they answer 400 ("tariffs need OCPP 2.1; …"): neither version has
these messages. Anything the shortcuts do not cover goes through ``POST …/ocpp/{Action}``.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AwareDatetime, BaseModel, Field

from csms.api.commands import CommandOut, send_built
from csms.api.common import CpId, utc_text
from csms.gateway.server import Gateway
from csms.ocpp import commands

# DERControlEnumType of 2.1 (checked against the schema in tests/test_ocpp21_commands.py).
DerControlType = Literal[
    "EnterService", "FreqDroop", "FreqWatt", "FixedPFAbsorb", "FixedPFInject", "FixedVar", "Gradients",
    "HFMustTrip", "HFMayTrip", "HVMustTrip", "HVMomCess", "HVMayTrip", "LimitMaxDischarge", "LFMustTrip",
    "LVMustTrip", "LVMomCess", "LVMayTrip", "PowerMonitoringMustTrip", "VoltVar", "VoltWatt", "WattPF", "WattVar"]

Price = Annotated[float | None, Field(None, ge=0, allow_inf_nan=False)]
EvseQuery = Annotated[int, Query(ge=0, le=64, description="0: the whole charging station")]
TransactionId = Annotated[str, Path(min_length=1, max_length=36)]
ControlId = Annotated[str, Field(min_length=1, max_length=36)]


class TariffIn(BaseModel):
    """One price per component, excluding tax; ``tax_rate_pct`` (VAT) applies to all of them."""

    tariff_id: str = Field(min_length=1, max_length=60)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. EUR")
    energy_price_kwh: Price = None
    charging_time_price_min: Price = None
    idle_time_price_min: Price = None
    fixed_fee: Price = None
    tax_rate_pct: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    description: str | None = Field(None, min_length=1, max_length=1024, description="shown to the driver")
    language: str | None = Field(None, min_length=2, max_length=8, description="RFC 5646, e.g. en")
    valid_from: AwareDatetime | None = Field(None, description="absent: active at once")

    def tariff(self) -> commands.Tariff:
        return commands.Tariff(
            tariff_id=self.tariff_id, currency=self.currency, energy_price_kwh=self.energy_price_kwh,
            charging_time_price_min=self.charging_time_price_min, idle_time_price_min=self.idle_time_price_min,
            fixed_fee=self.fixed_fee, tax_rate_pct=self.tax_rate_pct, description=self.description,
            language=self.language, valid_from=utc_text(self.valid_from) if self.valid_from else None)


class DefaultTariffIn(BaseModel):
    evse_id: int = Field(0, ge=0, le=64, description="0: every EVSE of the charging station")
    tariff: TariffIn


class DerControlIn(BaseModel):
    control_id: ControlId
    control_type: DerControlType
    is_default: bool = Field(False, description="true: the default control; false: a scheduled one")
    setting: dict[str, object] = Field(
        description="the OCPP 2.1 object of the control type, as in the schema (camelCase): a DERCurveType for "
                    "the curve types, else FixedPFType, FixedVarType, FreqDroopType, EnterServiceType, "
                    "GradientType or LimitMaxDischargeType")


class DerRequestOut(CommandOut):
    request_id: int = Field(description="the requestId the charger's ReportDERControl messages carry")


def build_tariffs_router(*, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["commands"])

    @router.post("/charge-points/{cp_id}/tariffs/default")
    async def set_default_tariff(cp_id: CpId, body: DefaultTariffIn) -> CommandOut:
        """SetDefaultTariff (2.1): the tariff the charger applies when no driver-specific one is given."""
        return await send_built(gateway, cp_id, lambda v: commands.set_default_tariff(
            v, evse_id=body.evse_id, tariff=body.tariff.tariff()))

    @router.get("/charge-points/{cp_id}/tariffs")
    async def get_tariffs(cp_id: CpId, evse_id: EvseQuery = 0) -> CommandOut:
        """GetTariffs (2.1): the tariffs the charger holds, asked live."""
        return await send_built(gateway, cp_id, lambda v: commands.get_tariffs(v, evse_id=evse_id))

    @router.delete("/charge-points/{cp_id}/tariffs")
    async def clear_tariffs(cp_id: CpId,
                            tariff_id: Annotated[list[str] | None, Query(max_length=50)] = None,
                            evse_id: Annotated[int | None, Query(ge=0, le=64)] = None) -> CommandOut:
        """ClearTariffs (2.1): the given tariffs (``tariff_id`` repeated), or all, at one EVSE if given."""
        return await send_built(gateway, cp_id, lambda v: commands.clear_tariffs(
            v, tariff_ids=tariff_id or (), evse_id=evse_id))

    @router.post("/charge-points/{cp_id}/transactions/{transaction_id}/tariff")
    async def change_transaction_tariff(cp_id: CpId, transaction_id: TransactionId, body: TariffIn) -> CommandOut:
        """ChangeTransactionTariff (2.1): a new tariff for a running transaction (same currency)."""
        return await send_built(gateway, cp_id, lambda v: commands.change_transaction_tariff(
            v, transaction_id=transaction_id, tariff=body.tariff()))

    @router.post("/charge-points/{cp_id}/der-controls")
    async def set_der_control(cp_id: CpId, body: DerControlIn) -> CommandOut:
        """SetDERControl (2.1): one default or scheduled DER control."""
        return await send_built(gateway, cp_id, lambda v: commands.set_der_control(
            v, control_id=body.control_id, control_type=body.control_type, is_default=body.is_default,
            setting=dict(body.setting)))

    @router.get("/charge-points/{cp_id}/der-controls")
    async def get_der_control(cp_id: CpId, control_type: DerControlType | None = None,
                              control_id: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
                              is_default: bool | None = None) -> DerRequestOut:
        """GetDERControl (2.1): the charger accepts here and reports the controls in ReportDERControl."""
        request_id = secrets.randbelow(2**31 - 1) + 1
        out = await send_built(gateway, cp_id, lambda v: commands.get_der_control(
            v, request_id=request_id, is_default=is_default, control_type=control_type, control_id=control_id))
        return DerRequestOut(**out.model_dump(), request_id=request_id)

    @router.delete("/charge-points/{cp_id}/der-controls")
    async def clear_der_control(cp_id: CpId, is_default: bool, control_type: DerControlType | None = None,
                                control_id: Annotated[str | None, Query(min_length=1, max_length=36)] = None
                                ) -> CommandOut:
        """ClearDERControl (2.1): the default or scheduled controls, of one type or id if given."""
        return await send_built(gateway, cp_id, lambda v: commands.clear_der_control(
            v, is_default=is_default, control_type=control_type, control_id=control_id))

    return router
