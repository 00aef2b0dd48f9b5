"""OCPP 2.0.1 (and the 2.1 messages they share): answers and events per message.

TransactionEvent is keyed by (station, transactionId, seqNo) (E01/E13; R44 [2.0.1 E01.FR.08]–R46): an
Updated or Ended whose Started was never seen creates the record, late and
out-of-order events are merged, and every TransactionEvent is answered (J02.FR.19).
"""

from __future__ import annotations

from typing import Any

from csms.ocpp import handlers_security
from csms.ocpp.context import BootInfo, Context, Reply, clean_text
from csms.ocpp.handlers_common import Handler, acknowledge, int32, iso_utc, log_event, now_iso
from csms.ocpp.normalise import (
    event_time,
    flag_outside_window,
    register_reading,
    samples_v201,
)
from csms.ocpp.types import IdToken
from schemas.events import ConnectionEvent, Event, MeterEvent, StatusEvent, TransactionEvent


async def _id_token_info(ctx: Context, id_token: dict[str, Any]) -> dict[str, Any]:
    token = clean_text(id_token.get("idToken"), 36)
    if id_token.get("type") == "NoAuthorization":
        return {"status": "Accepted"}
    decision = await ctx.services.authorize(ctx.state.charge_point_id, IdToken(token))
    info: dict[str, Any] = {"status": decision.status}
    if decision.expiry is not None:
        info["cacheExpiryDateTime"] = iso_utc(decision.expiry)
    if decision.group_id:
        info["groupIdToken"] = {"idToken": decision.group_id[:36], "type": "Central"}
    return info


async def boot_notification(ctx: Context, p: dict[str, Any]) -> Reply:
    station = p.get("chargingStation") or {}
    info = BootInfo(vendor=clean_text(station.get("vendorName"), 64), model=clean_text(station.get("model"), 64),
                    serial_number=clean_text(station.get("serialNumber"), 64) or None,
                    firmware_version=clean_text(station.get("firmwareVersion"), 64) or None)
    decision = await ctx.services.boot(ctx.state.charge_point_id, info)
    ctx.state.registration = decision.status
    ctx.state.triggered.pop("BootNotification", None)
    event = ConnectionEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                            time=ctx.received_at, event="boot", node_id=ctx.state.node_id,
                            ocpp_version=ctx.state.version,
                            detail={"vendor": info.vendor, "model": info.model,
                                    "serial_number": info.serial_number or "",
                                    "firmware_version": info.firmware_version or "",
                                    "reason": clean_text(p.get("reason"), 32),
                                    "registration_status": decision.status})
    return Reply({"currentTime": now_iso(), "interval": decision.interval_s, "status": decision.status}, [event])


async def heartbeat(ctx: Context, p: dict[str, Any]) -> Reply:
    return Reply({"currentTime": now_iso()})  # G02.FR.03


async def status_notification(ctx: Context, p: dict[str, Any]) -> Reply:
    at = event_time(p.get("timestamp"), ctx.received_at)   # implausible: the receive time, flagged
    event = StatusEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=at.time,
                        evse_id=int32(p.get("evseId"), "evseId", minimum=0),
                        connector_id=int32(p.get("connectorId"), "connectorId", minimum=0),
                        status=clean_text(p.get("connectorStatus"), 32), flags=at.flags, raw_time=at.raw)
    return Reply({}, [event])


async def authorize(ctx: Context, p: dict[str, Any]) -> Reply:
    return Reply({"idTokenInfo": await _id_token_info(ctx, p.get("idToken") or {})})


async def transaction_event(ctx: Context, p: dict[str, Any]) -> Reply:
    info = p.get("transactionInfo") or {}
    uid = clean_text(info.get("transactionId"), 36)
    kind = {"Started": "started", "Updated": "updated", "Ended": "ended"}[str(p.get("eventType"))]
    at = event_time(p.get("timestamp"), ctx.received_at)   # implausible: the receive time, flagged
    ts = at.time
    seq_no = int32(p.get("seqNo"), "seqNo", minimum=0)
    evse = p.get("evse")
    if isinstance(evse, dict):
        pair = (int32(evse.get("id"), "evse.id", minimum=0),
                int32(evse["connectorId"], "evse.connectorId", minimum=0) if "connectorId" in evse else None)
        ctx.state.remember_tx_evse(uid, pair)
    evse_id, connector_id = ctx.state.tx_evse.get(uid, (None, None))
    if kind == "started":
        ctx.state.remember_window(uid, start=ts)
    elif kind == "ended":
        ctx.state.remember_window(uid, stop=ts)
    id_token = p.get("idToken")
    samples = samples_v201(p.get("meterValue") or [], received_at=ctx.received_at, evse_id=evse_id or 1)
    samples = ctx.state.registers.check(evse_id or 0, connector_id or 0, samples)
    samples = flag_outside_window(samples, *ctx.state.tx_window.get(uid, (None, None)))
    remote_start = info.get("remoteStartId")
    tx_event = TransactionEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, transaction_uid=uid, time=ts,
        kind=kind,  # type: ignore[arg-type]
        evse_id=evse_id, connector_id=connector_id,
        id_token=clean_text(id_token.get("idToken"), 36) if isinstance(id_token, dict) and kind != "ended" else None,
        stop_id_token=clean_text(id_token.get("idToken"), 36) if isinstance(id_token, dict) and kind == "ended"
        else None,
        meter_start_wh=register_reading(samples, context="Transaction.Begin"),
        meter_stop_wh=register_reading(samples, context="Transaction.End"),
        # stoppedReason absent on Ended means Local (E06.FR.09).
        stop_reason=clean_text(info.get("stoppedReason") or "Local", 32) if kind == "ended" else None,
        charging_state=clean_text(info.get("chargingState"), 32) or None,
        remote_start_id=int32(remote_start, "remoteStartId") if remote_start is not None else None,
        seq_no=seq_no, trigger_reason=clean_text(p.get("triggerReason"), 32), offline=bool(p.get("offline")),
        flags=at.flags)
    events: list[Event] = [tx_event]
    if samples:
        events.append(MeterEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                                 evse_id=evse_id or 0, connector_id=connector_id or 0, transaction_uid=uid,
                                 samples=samples))
    if kind == "ended":
        # The EVSE stays remembered (bounded): a retried Ended must land where the first did.
        ctx.state.tx_window.pop(uid, None)
    reply: dict[str, Any] = {}
    if isinstance(id_token, dict):  # E01.FR.11/12: verify and return idTokenInfo
        reply["idTokenInfo"] = await _id_token_info(ctx, id_token)
    return Reply(reply, events)


async def meter_values(ctx: Context, p: dict[str, Any]) -> Reply:
    evse_id = int32(p.get("evseId"), "evseId", minimum=0)
    samples = samples_v201(p.get("meterValue") or [], received_at=ctx.received_at, evse_id=evse_id)
    samples = ctx.state.registers.check(evse_id, 0, samples)
    return Reply({}, [MeterEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                                 evse_id=evse_id, connector_id=0, transaction_uid="", samples=samples)])


async def notify_event(ctx: Context, p: dict[str, Any]) -> Reply:
    events: list[Event] = [log_event(ctx, "NotifyEvent", p)]
    for data in p.get("eventData") or []:
        component = data.get("component") or {}
        variable = data.get("variable") or {}
        # Connector AvailabilityState is the same information as StatusNotification (R37 [2.0.1 E02.FR.05];
        # 2.1 deprecates StatusNotification in favour of it).
        if component.get("name") == "Connector" and variable.get("name") == "AvailabilityState":
            evse = component.get("evse") or {}
            if "id" in evse:
                at = event_time(data.get("timestamp"), ctx.received_at)
                events.append(StatusEvent(
                    charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=at.time,
                    evse_id=int32(evse.get("id"), "evse.id", minimum=0),
                    connector_id=int32(evse.get("connectorId", 0), "evse.connectorId", minimum=0),
                    status=clean_text(data.get("actualValue"), 32), flags=at.flags, raw_time=at.raw))
    return Reply({}, events)


async def data_transfer(ctx: Context, p: dict[str, Any]) -> Reply:
    return Reply({"status": "UnknownVendorId"}, [log_event(ctx, "DataTransfer", p)])  # TC_P_02


HANDLERS: dict[str, Handler] = {
    "BootNotification": boot_notification,
    "Heartbeat": heartbeat,
    "StatusNotification": status_notification,
    "Authorize": authorize,
    "TransactionEvent": transaction_event,
    "MeterValues": meter_values,
    "NotifyEvent": notify_event,
    "DataTransfer": data_transfer,
    "NotifyReport": acknowledge("NotifyReport"),
    "FirmwareStatusNotification": acknowledge("FirmwareStatusNotification"),
    "LogStatusNotification": acknowledge("LogStatusNotification"),
    "SecurityEventNotification": handlers_security.security_event_notification,  # A04: stored, confirmed
    "PublishFirmwareStatusNotification": acknowledge("PublishFirmwareStatusNotification"),
    "NotifyMonitoringReport": acknowledge("NotifyMonitoringReport"),
    "NotifyCustomerInformation": acknowledge("NotifyCustomerInformation"),
    "NotifyDisplayMessages": acknowledge("NotifyDisplayMessages"),
    "ReservationStatusUpdate": acknowledge("ReservationStatusUpdate"),
    "NotifyChargingLimit": acknowledge("NotifyChargingLimit"),
    "ClearedChargingLimit": acknowledge("ClearedChargingLimit"),
    "ReportChargingProfiles": acknowledge("ReportChargingProfiles"),
    # Smart charging and ISO 15118 certificate services are not provided by this CSMS:
    # answer with the schema's refusal rather than an error, so the station can go on.
    "NotifyEVChargingNeeds": acknowledge("NotifyEVChargingNeeds", {"status": "Rejected"}),
    "NotifyEVChargingSchedule": acknowledge("NotifyEVChargingSchedule", {"status": "Rejected"}),
    "Get15118EVCertificate": acknowledge("Get15118EVCertificate", {"status": "Failed", "exiResponse": ""}),
    "GetCertificateStatus": acknowledge("GetCertificateStatus", {"status": "Failed"}),
    # A02/A03: the CSR is checked, signed by the operator CA, CertificateSigned follows the answer.
    "SignCertificate": handlers_security.sign_certificate,
}

TRANSACTION_ACTIONS = frozenset({"TransactionEvent", "MeterValues"})
PRE_BOOT_ACTIONS = frozenset({"BootNotification"})
