"""OCPP 2.1: the messages a charging station sends that 2.0.1 does not have.

Each handler answers as 2.1 prescribes and turns what the message carries into version-neutral events
(schemas/events.py; tables of migration 0011). Where the CSMS has no policy of its own it gives the neutral
answer the message allows and records the message, never an error:

* NotifySettlement, NotifyDERAlarm, NotifyDERStartStop, ReportDERControl, NotifyPriorityCharging,
  BatterySwap, ClosePeriodicEventStream: the response has no decision (only optional fields); stored.
* OpenPeriodicEventStream: Accepted, since the stream's data is stored (N11).
* NotifyPeriodicEventStream: a SEND (2.1 Part 4 §4.2.4), never answered; its values stored like meter samples.
* PullDynamicScheduleUpdate: Rejected: this CSMS keeps no dynamic schedules to send (K28); recorded.
* GetCertificateChainStatus: Failed for every certificate: this CSMS has no OCSP/CRL client to ask (M07);
  recorded.
* VatNumberValidation: Rejected: this CSMS cannot validate a VAT number (it has no VIES or tax registry
  client); recorded, the charger then issues its receipt without the company's details.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from csms.ocpp.context import Context, Reply, clean_json, clean_text, digest
from csms.ocpp.handlers_common import Handler, int32, iso_utc, log_event
from csms.ocpp.normalise import event_time, parse_timestamp
from schemas.events import (
    BatterySwapEvent,
    DerEvent,
    PeriodicStreamEvent,
    PriorityChargingEvent,
    SettlementEvent,
    StreamDataEvent,
    StreamValue,
    SwappedBattery,
)

# 2.1 SEND messages: no response schema, never answered (2.1 Part 4 §4.2.4).
SEND_ACTIONS = frozenset({"NotifyPeriodicEventStream"})

_DECIMAL = re.compile(r"^\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$")
_MAX_OFFSET_S = 366 * 86400.0  # a stream value's t beyond a year from its basetime is not plausible


def _number(text: str) -> float | None:
    if not _DECIMAL.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _address(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {clean_text(k, 32): clean_text(v, 100) for k, v in value.items() if k != "customData"}


async def notify_settlement(ctx: Context, p: dict[str, Any]) -> Reply:
    """C21/C22/C24: the settlement of a payment terminal, linked to its transaction when it names one. The
    response's receiptUrl/receiptId are optional (the CSMS may offer a receipt); this CSMS has none: {}."""
    at = event_time(p.get("settlementTime"), ctx.received_at)
    event = SettlementEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=at.time,
        psp_ref=clean_text(p.get("pspRef"), 255), status=clean_text(p.get("status"), 16),
        amount=float(p["settlementAmount"]), digest=digest(p),
        transaction_uid=clean_text(p.get("transactionId"), 36), status_info=clean_text(p.get("statusInfo"), 500),
        receipt_id=clean_text(p.get("receiptId"), 50), receipt_url=clean_text(p.get("receiptUrl"), 2000),
        vat_number=clean_text(p.get("vatNumber"), 20), vat_company=_address(p.get("vatCompany")))
    return Reply({}, [event])


async def notify_der_alarm(ctx: Context, p: dict[str, Any]) -> Reply:
    """R05: a grid event or DER alarm started or ended; acknowledged with {} and stored."""
    at = event_time(p.get("timestamp"), ctx.received_at)
    ended = p.get("alarmEnded")
    return Reply({}, [DerEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=at.time, kind="alarm",
        digest=digest(p), control_type=clean_text(p.get("controlType"), 32),
        grid_event_fault=clean_text(p.get("gridEventFault"), 32),
        alarm_ended=bool(ended) if ended is not None else None, extra_info=clean_text(p.get("extraInfo"), 200))])


async def notify_der_start_stop(ctx: Context, p: dict[str, Any]) -> Reply:
    """R04 (NotifyDERStartStop): a DER control started or stopped, and the controls it superseded."""
    at = event_time(p.get("timestamp"), ctx.received_at)
    superseded = [clean_text(s, 36) for s in p.get("supersededIds") or []]
    return Reply({}, [DerEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=at.time, kind="start_stop",
        digest=digest(p), control_id=clean_text(p.get("controlId"), 36), started=bool(p.get("started")),
        superseded_ids=superseded)])


async def report_der_control(ctx: Context, p: dict[str, Any]) -> Reply:
    """R04 (GetDERControl → ReportDERControl): the controls set at the station, one event per message part
    (``tbc``: more follow); the controls are kept as sent."""
    controls = {k: clean_json(v) for k, v in p.items() if k not in ("requestId", "tbc", "customData")}
    return Reply({}, [DerEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=ctx.received_at,
        kind="report", digest=digest(p), request_id=int32(p.get("requestId"), "requestId"),
        tbc=bool(p.get("tbc")), detail=controls)])


async def notify_priority_charging(ctx: Context, p: dict[str, Any]) -> Reply:
    """Priority charging activated or ended for a transaction (the answer to UsePriorityCharging)."""
    return Reply({}, [PriorityChargingEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
        transaction_uid=clean_text(p.get("transactionId"), 36), activated=bool(p.get("activated")),
        message_id=ctx.message_id)])


async def battery_swap(ctx: Context, p: dict[str, Any]) -> Reply:
    """S03: batteries swapped in or out (authorisation is the separate Authorize of S01); stored per battery."""
    batteries = []
    for b in p.get("batteryData") or []:
        produced = parse_timestamp(b.get("productionDate")) if b.get("productionDate") is not None else None
        batteries.append(SwappedBattery(
            evse_id=int32(b.get("evseId"), "batteryData.evseId", minimum=0),
            serial_number=clean_text(b.get("serialNumber"), 50), soc=float(b["soC"]), soh=float(b["soH"]),
            production_date=produced, vendor_info=clean_text(b.get("vendorInfo"), 500)))
    token = p.get("idToken") or {}
    return Reply({}, [BatterySwapEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
        request_id=int32(p.get("requestId"), "requestId"), event_type=clean_text(p.get("eventType"), 32),
        id_token=clean_text(token.get("idToken"), 255), id_token_type=clean_text(token.get("type"), 20),
        digest=digest(p), batteries=batteries)])


async def open_periodic_event_stream(ctx: Context, p: dict[str, Any]) -> Reply:
    """N11: the charger opens a stream for a periodic monitor; Accepted, its data is stored (N15)."""
    data = p.get("constantStreamData") or {}
    params = data.get("params") or {}
    interval, values = params.get("interval"), params.get("values")
    return Reply({"status": "Accepted"}, [PeriodicStreamEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=ctx.received_at,
        stream_id=int32(data.get("id"), "constantStreamData.id", minimum=0), kind="open",
        variable_monitoring_id=int32(data.get("variableMonitoringId"), "variableMonitoringId", minimum=0),
        interval_s=int32(interval, "params.interval", minimum=0) if interval is not None else None,
        values=int32(values, "params.values", minimum=0) if values is not None else None)])


async def close_periodic_event_stream(ctx: Context, p: dict[str, Any]) -> Reply:
    """N13: the charger closed a stream; {} and the stream is marked closed."""
    return Reply({}, [PeriodicStreamEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=ctx.received_at,
        stream_id=int32(p.get("id"), "id", minimum=0), kind="close")])


def _value_time(basetime: datetime, offset: Any, received_at: datetime) -> datetime:
    t = float(offset) if isinstance(offset, int | float) and not isinstance(offset, bool) else 0.0
    if not math.isfinite(t) or abs(t) > _MAX_OFFSET_S:
        return basetime
    try:
        return basetime + timedelta(seconds=t)
    except OverflowError:
        return received_at


async def notify_periodic_event_stream(ctx: Context, p: dict[str, Any]) -> Reply:
    """N15 (SEND, no answer): each value at basetime + t (seconds), the value as sent and as a number when it
    is one; ``seq`` is its position in the message, so a resent message is stored once."""
    base = event_time(p.get("basetime"), ctx.received_at).time
    values = []
    for seq, element in enumerate(p.get("data") or []):
        raw = clean_text(element.get("v"), 2500)
        values.append(StreamValue(seq=seq, time=_value_time(base, element.get("t"), ctx.received_at),
                                  raw_value=raw, value=_number(raw)))
    return Reply({}, [StreamDataEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
        stream_id=int32(p.get("id"), "id", minimum=0), basetime=base,
        pending=int32(p.get("pending"), "pending", minimum=0), values=values)])


async def pull_dynamic_schedule_update(ctx: Context, p: dict[str, Any]) -> Reply:
    """K28: the charger asks for the latest setpoints of a dynamic charging profile. This CSMS keeps no dynamic
    schedules: Rejected (the profile stays as it is), the request recorded."""
    return Reply({"status": "Rejected",
                  "statusInfo": {"reasonCode": "NotSupported",
                                 "additionalInfo": "this CSMS keeps no dynamic charging schedules"}},
                 [log_event(ctx, "PullDynamicScheduleUpdate", p)])


async def get_certificate_chain_status(ctx: Context, p: dict[str, Any]) -> Reply:
    """M07: revocation status of an EV's certificate chain. This CSMS has no OCSP/CRL client: Failed
    ("could not be retrieved") for each certificate asked, nextUpdate now (ask again at any time); recorded."""
    now = iso_utc(ctx.received_at)
    statuses = [{"certificateHashData": {k: v for k, v in (r.get("certificateHashData") or {}).items()
                                         if k != "customData"},
                 "source": r.get("source"), "status": "Failed", "nextUpdate": now}
                for r in (p.get("certificateStatusRequests") or [])[:4]]
    return Reply({"certificateStatus": statuses}, [log_event(ctx, "GetCertificateChainStatus", p)])


async def vat_number_validation(ctx: Context, p: dict[str, Any]) -> Reply:
    """VAT number validation for a receipt (ad hoc payment, C18/C24). This CSMS has no VAT registry (VIES)
    client and so cannot vouch for a number: Rejected, with the reason; the request recorded."""
    reply: dict[str, Any] = {"vatNumber": clean_text(p.get("vatNumber"), 20), "status": "Rejected",
                             "statusInfo": {"reasonCode": "NotSupported",
                                            "additionalInfo": "this CSMS cannot validate VAT numbers"}}
    if "evseId" in p:
        reply["evseId"] = int32(p["evseId"], "evseId", minimum=0)
    return Reply(reply, [log_event(ctx, "VatNumberValidation", p)])


HANDLERS: dict[str, Handler] = {
    "NotifySettlement": notify_settlement,
    "NotifyDERAlarm": notify_der_alarm,
    "NotifyDERStartStop": notify_der_start_stop,
    "ReportDERControl": report_der_control,
    "NotifyPriorityCharging": notify_priority_charging,
    "BatterySwap": battery_swap,
    "OpenPeriodicEventStream": open_periodic_event_stream,
    "ClosePeriodicEventStream": close_periodic_event_stream,
    "NotifyPeriodicEventStream": notify_periodic_event_stream,
    "PullDynamicScheduleUpdate": pull_dynamic_schedule_update,
    "GetCertificateChainStatus": get_certificate_chain_status,
    "VatNumberValidation": vat_number_validation,
}
