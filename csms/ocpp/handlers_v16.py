"""OCPP 1.6J: the answer and the events for every charger-initiated message.

Core profile (1.6 §4) plus the Security Whitepaper ed. 3 messages. Transaction
messages (StartTransaction, StopTransaction, MeterValues) are always answered when
they are readable: the CSMS cannot refuse a transaction (1.6 §4.8, §4.10; R40).
"""

from __future__ import annotations

from typing import Any

from csms.ocpp.context import BootInfo, Context, IdToken, Reply, clean_text
from csms.ocpp.handlers_common import Handler, acknowledge, int32, iso_utc, log_event, now_iso
from csms.ocpp.normalise import flag_outside_window, parse_timestamp, samples_v16, timestamp_flags
from schemas.events import (
    FLAG_METER_STOP_BELOW_START,
    ConnectionEvent,
    MeterEvent,
    StatusEvent,
    TransactionEvent,
)

# 1.6 IdTagInfo.status has no "Unknown": an unknown tag is Invalid (1.6 §7.14).
_V16_AUTH = {"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"}


def _evse_connector(connector_id: int) -> tuple[int, int]:
    # 1.6 connector N is presented as EVSE N with one connector (OCA application note on
    # OCPI EVSEs); connector 0 is the charge point as a whole.
    return (connector_id, 1) if connector_id > 0 else (0, 0)


async def _id_tag_info(ctx: Context, id_tag: str) -> dict[str, Any]:
    decision = await ctx.services.authorize(ctx.state.charge_point_id, IdToken(id_tag))
    info: dict[str, Any] = {"status": decision.status if decision.status in _V16_AUTH else "Invalid"}
    if decision.expiry is not None:
        info["expiryDate"] = iso_utc(decision.expiry)
    if decision.group_id:
        info["parentIdTag"] = decision.group_id[:20]
    return info


async def boot_notification(ctx: Context, p: dict[str, Any]) -> Reply:
    info = BootInfo(vendor=clean_text(p.get("chargePointVendor"), 64),
                    model=clean_text(p.get("chargePointModel"), 64),
                    serial_number=clean_text(p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"), 64)
                    or None,
                    firmware_version=clean_text(p.get("firmwareVersion"), 64) or None)
    decision = await ctx.services.boot(ctx.state.charge_point_id, info)
    ctx.state.registration = decision.status
    ctx.state.triggered.discard("BootNotification")
    event = ConnectionEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                            time=ctx.received_at, event="boot", node_id=ctx.state.node_id, ocpp_version="1.6",
                            detail={"vendor": info.vendor, "model": info.model,
                                    "serial_number": info.serial_number or "",
                                    "firmware_version": info.firmware_version or "",
                                    "registration_status": decision.status})
    return Reply({"status": decision.status, "currentTime": now_iso(), "interval": decision.interval_s}, [event])


async def heartbeat(ctx: Context, p: dict[str, Any]) -> Reply:
    # The response carries the CSMS's current time (1.6 §4.6; R18).
    return Reply({"currentTime": now_iso()})


async def status_notification(ctx: Context, p: dict[str, Any]) -> Reply:
    connector = int32(p.get("connectorId"), "connectorId", minimum=0)
    evse_id, connector_id = _evse_connector(connector)
    ts = parse_timestamp(p.get("timestamp")) or ctx.received_at
    event = StatusEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=ts,
                        evse_id=evse_id, connector_id=connector_id, status=clean_text(p.get("status"), 32),
                        error_code=clean_text(p.get("errorCode"), 64), vendor_id=clean_text(p.get("vendorId"), 255),
                        vendor_error_code=clean_text(p.get("vendorErrorCode"), 50),
                        info=clean_text(p.get("info"), 50))
    # Always {} — unknown connectors and odd transitions are logged, never rejected (1.6 §4.9; R36).
    return Reply({}, [event])


async def authorize(ctx: Context, p: dict[str, Any]) -> Reply:
    return Reply({"idTagInfo": await _id_tag_info(ctx, clean_text(p.get("idTag"), 20))})


async def start_transaction(ctx: Context, p: dict[str, Any]) -> Reply:
    connector = int32(p.get("connectorId"), "connectorId", minimum=0)
    id_tag = clean_text(p.get("idTag"), 20)
    meter_start = int32(p.get("meterStart"), "meterStart")
    raw_ts = str(p.get("timestamp"))
    ts = parse_timestamp(raw_ts) or ctx.received_at
    # R41: a retried StartTransaction (same connector, tag, time and meter) gets the same id.
    start_key = f"{connector}|{id_tag}|{raw_ts}|{meter_start}"
    tx_id = await ctx.services.allocate_transaction_id(ctx.state.charge_point_id, start_key)
    id_tag_info = await _id_tag_info(ctx, id_tag)
    uid = str(tx_id)
    ctx.state.open_tx_by_connector[connector] = tx_id
    ctx.state.meter_start_wh[uid] = float(meter_start)
    ctx.state.remember_window(uid, start=ts)
    evse_id, connector_id = _evse_connector(connector)
    event = TransactionEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                             transaction_uid=uid, time=ts, kind="started", ocpp16_transaction_id=tx_id,
                             evse_id=evse_id, connector_id=connector_id, id_token=id_tag,
                             meter_start_wh=float(meter_start), flags=timestamp_flags(ts, ctx.received_at))
    # The transactionId is returned even when the tag is not Accepted (errata 3.17; R38).
    return Reply({"transactionId": tx_id, "idTagInfo": id_tag_info}, [event])


def _resolve_tx(ctx: Context, tx_id: int, connector: int | None) -> int | None:
    """transactionId -1 means the charger never learnt its id (errata 3.18; R42)."""
    if tx_id != -1:
        return tx_id
    if connector is not None:
        return ctx.state.open_tx_by_connector.get(connector)
    open_ids = set(ctx.state.open_tx_by_connector.values())
    return open_ids.pop() if len(open_ids) == 1 else None


async def stop_transaction(ctx: Context, p: dict[str, Any]) -> Reply:
    given = int32(p.get("transactionId"), "transactionId")
    meter_stop = int32(p.get("meterStop"), "meterStop")
    ts = parse_timestamp(p.get("timestamp")) or ctx.received_at
    tx_id = _resolve_tx(ctx, given, None)
    uid = str(tx_id) if tx_id is not None else f"-1@{ts.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    connector = next((c for c, t in ctx.state.open_tx_by_connector.items() if t == tx_id), None)
    if connector is not None:
        del ctx.state.open_tx_by_connector[connector]
    flags = timestamp_flags(ts, ctx.received_at)
    ctx.state.remember_window(uid, stop=ts)
    start = ctx.state.meter_start_wh.pop(uid, None)
    if start is not None and meter_stop < start:
        flags |= FLAG_METER_STOP_BELOW_START
    id_tag = clean_text(p.get("idTag"), 20) or None
    evse_id, connector_id = _evse_connector(connector) if connector is not None else (None, None)
    events: list[Any] = [TransactionEvent(
        charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, transaction_uid=uid, time=ts,
        kind="ended", ocpp16_transaction_id=tx_id, evse_id=evse_id, connector_id=connector_id,
        meter_stop_wh=float(meter_stop), stop_reason=clean_text(p.get("reason") or "Local", 32),  # absent = Local
        stop_id_token=id_tag, flags=flags)]
    data = p.get("transactionData")
    if isinstance(data, list) and data:
        # The connector is unknown when the Start was on another connection: these are still
        # transaction samples, not connector-0 station totals (connector_id=-1 means "unknown").
        samples = samples_v16(data, received_at=ctx.received_at, connector_id=connector if connector is not None
                              else -1)
        samples = ctx.state.registers.check(evse_id if evse_id is not None else -1,
                                            connector_id if connector_id is not None else -1, samples)
        samples = flag_outside_window(samples, *ctx.state.tx_window.get(uid, (None, None)))
        events.append(MeterEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                                 evse_id=evse_id or 0, connector_id=connector_id or 0, transaction_uid=uid,
                                 samples=samples))
    reply: dict[str, Any] = {"idTagInfo": await _id_tag_info(ctx, id_tag)} if id_tag else {}
    return Reply(reply, events)


async def meter_values(ctx: Context, p: dict[str, Any]) -> Reply:
    connector = int32(p.get("connectorId"), "connectorId", minimum=0)
    tx_id: int | None = None
    if "transactionId" in p:
        tx_id = _resolve_tx(ctx, int32(p["transactionId"], "transactionId"), connector)
    evse_id, connector_id = _evse_connector(connector)
    samples = samples_v16(p.get("meterValue") or [], received_at=ctx.received_at, connector_id=connector)
    samples = ctx.state.registers.check(evse_id, connector_id, samples)
    if tx_id is not None:
        samples = flag_outside_window(samples, *ctx.state.tx_window.get(str(tx_id), (None, None)))
    event = MeterEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, evse_id=evse_id,
                       connector_id=connector_id, transaction_uid=str(tx_id) if tx_id is not None else "",
                       samples=samples)
    # Values without a transactionId and connector-0 totals are kept, never dropped (R43).
    return Reply({}, [event])


async def data_transfer(ctx: Context, p: dict[str, Any]) -> Reply:
    # No vendor extensions are implemented: say so (1.6 §4.3; TC_P_02-style answer).
    return Reply({"status": "UnknownVendorId"}, [log_event(ctx, "DataTransfer", p)])


HANDLERS: dict[str, Handler] = {
    "BootNotification": boot_notification,
    "Heartbeat": heartbeat,
    "StatusNotification": status_notification,
    "Authorize": authorize,
    "StartTransaction": start_transaction,
    "StopTransaction": stop_transaction,
    "MeterValues": meter_values,
    "DataTransfer": data_transfer,
    "DiagnosticsStatusNotification": acknowledge("DiagnosticsStatusNotification"),
    "FirmwareStatusNotification": acknowledge("FirmwareStatusNotification"),
    # Security Whitepaper ed. 3 messages from the charge point.
    "LogStatusNotification": acknowledge("LogStatusNotification"),
    "SecurityEventNotification": acknowledge("SecurityEventNotification"),  # must be confirmed (A04.FR.03)
    "SignedFirmwareStatusNotification": acknowledge("SignedFirmwareStatusNotification"),
    # No CA is configured to sign certificates, so a CSR cannot be processed (A02.FR.11/12).
    "SignCertificate": acknowledge("SignCertificate", {"status": "Rejected"}),
}

# Transaction-related messages (1.6 §3.7): the charger retries these on failure, so they
# are answered only after their events are durable; the others are answered the same way.
TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})

# Allowed before BootNotification is Accepted (R33).
PRE_BOOT_ACTIONS = frozenset({"BootNotification"})

