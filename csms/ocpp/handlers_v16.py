"""OCPP 1.6J: the answer and the events for every charger-initiated message.

Core profile (1.6 §4) plus the Security Whitepaper ed. 3 messages. Transaction
messages (StartTransaction, StopTransaction, MeterValues) are always answered when
they are readable: the CSMS cannot refuse a transaction (1.6 §4.8, §4.10; R40).
"""

from __future__ import annotations

import hashlib
from datetime import UTC
from typing import Any

import msgspec

from csms.ocpp import handlers_security
from csms.ocpp.context import BootInfo, Context, Reply, clean_text
from csms.ocpp.handlers_common import Handler, acknowledge, int32, iso_utc, log_event, now_iso
from csms.ocpp.normalise import EventTime, event_time, flag_outside_window, samples_v16
from csms.ocpp.types import IdToken
from schemas.events import (
    FLAG_METER_STOP_BELOW_START,
    FLAG_UNKNOWN_TRANSACTION,
    ConnectionEvent,
    MeterEvent,
    Sample,
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
    ctx.state.triggered.pop("BootNotification", None)
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
    at = event_time(p.get("timestamp"), ctx.received_at)   # implausible: the receive time, flagged
    event = StatusEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, time=at.time,
                        evse_id=evse_id, connector_id=connector_id, status=clean_text(p.get("status"), 32),
                        error_code=clean_text(p.get("errorCode"), 64), vendor_id=clean_text(p.get("vendorId"), 255),
                        vendor_error_code=clean_text(p.get("vendorErrorCode"), 50),
                        info=clean_text(p.get("info"), 50), flags=at.flags, raw_time=at.raw)
    # Always {} — unknown connectors and odd transitions are logged, never rejected (1.6 §4.9; R36).
    return Reply({}, [event])


async def authorize(ctx: Context, p: dict[str, Any]) -> Reply:
    return Reply({"idTagInfo": await _id_tag_info(ctx, clean_text(p.get("idTag"), 20))})


async def start_transaction(ctx: Context, p: dict[str, Any]) -> Reply:
    connector = int32(p.get("connectorId"), "connectorId", minimum=0)
    id_tag = clean_text(p.get("idTag"), 20)
    meter_start = int32(p.get("meterStart"), "meterStart")
    raw_ts = str(p.get("timestamp"))
    at = event_time(p.get("timestamp"), ctx.received_at)   # implausible: the receive time, flagged
    ts = at.time
    start_key = _start_key(connector, id_tag, raw_ts, meter_start)
    tx_id = await ctx.services.allocate_transaction_id(ctx.state.charge_point_id, start_key)
    id_tag_info = await _id_tag_info(ctx, id_tag)
    uid = str(tx_id)
    ctx.state.open_tx_by_connector[connector] = tx_id
    ctx.state.unknown_tx_ids.pop(tx_id, None)
    ctx.state.meter_start_wh[uid] = float(meter_start)
    ctx.state.remember_window(uid, start=ts)
    evse_id, connector_id = _evse_connector(connector)
    event = TransactionEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                             transaction_uid=uid, time=ts, kind="started", ocpp16_transaction_id=tx_id,
                             evse_id=evse_id, connector_id=connector_id, id_token=id_tag,
                             meter_start_wh=float(meter_start), flags=at.flags)
    # The transactionId is returned even when the tag is not Accepted (1.6 errata 3.17; R38).
    return Reply({"transactionId": tx_id, "idTagInfo": id_tag_info}, [event])


# Unknown ids remembered per connection, so that a charger repeating one costs one look-up.
_UNKNOWN_IDS_REMEMBERED = 64


def _start_key(connector: int, id_tag: str, raw_timestamp: str, meter_start: int) -> str:
    # R41 [1.6 §3.7.1, 2.0.1 E13]: a retried StartTransaction (same connector, tag, time and meter) gets the same id.
    # The connector comes first: _key_connector reads it back for the transaction's later messages.
    return f"{connector}|{id_tag}|{raw_timestamp}|{meter_start}"


def _key_connector(start_key: str) -> int | None:
    head = start_key.split("|", 1)[0]
    return int(head) if head.isdigit() else None


async def _known_transaction(ctx: Context, given: int) -> tuple[bool, int | None]:
    """Whether ``given`` is a transactionId this CSMS handed to this charger (R42 [1.6 errata 3.18]), and the
    connector of its StartTransaction (None when that cannot be told).

    -1 is the charger saying it never got an id (errata 3.18); ours are positive. Any other id
    not in this connection's state is looked up: a StartTransaction answered on an earlier
    connection (or node) is known; an id never given to this charger (another charger's, one
    from a previous central system) is not, and must not change anybody's transaction. The
    connector comes from what was stored when the id was given, so every retry of a message
    gets the same one on any connection (the natural keys of its samples include it).
    """
    if given == -1:
        return False, None
    for connector, tx_id in ctx.state.open_tx_by_connector.items():
        if tx_id == given:
            return True, connector
    if given in ctx.state.unknown_tx_ids:
        # Still unknown: an id becomes this charger's only through a StartTransaction, and that
        # is answered on this connection (start_transaction takes the id out of this set).
        return False, None
    key = await ctx.services.transaction_start_key(ctx.state.charge_point_id, given)
    if key is None:
        if len(ctx.state.unknown_tx_ids) >= _UNKNOWN_IDS_REMEMBERED:
            ctx.state.unknown_tx_ids.clear()
        ctx.state.unknown_tx_ids[given] = None
        return False, None
    started_on = _key_connector(key)
    if started_on is not None and started_on not in ctx.state.open_tx_by_connector:
        ctx.state.open_tx_by_connector[started_on] = given  # the next messages need no look-up
    return True, started_on


def unknown_transaction_uid(given: int) -> str:
    """The session of a positive transactionId never given to this charger: one per charger and
    id, where its MeterValues and its stop (and their retries, R41 [1.6 §3.7.1, 2.0.1 E13]) meet. Our own ids are plain
    numbers, so it can never merge into one of them, even if the id is allocated later."""
    return f"unknown-{given}"


def minus_one_uid(at: EventTime, raw_timestamp: object, meter_stop: int) -> str:
    """The session of a StopTransaction with transactionId -1, the same for every retry of that
    message (R41 [1.6 §3.7.1, 2.0.1 E13]): -1 carries nothing but the stop itself, so its timestamp (to the millisecond,
    the precision chargers send) and meterStop. An implausible timestamp is replaced by the
    receive time, which differs between retries, so its text is hashed instead. At most 36
    characters (transactions.transaction_uid)."""
    if at.flags or raw_timestamp is None:
        text = "" if raw_timestamp is None else str(raw_timestamp)
        return f"-1@#{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()[:16]}/{meter_stop}"
    moment = at.time.astimezone(UTC)
    return f"-1@{moment.strftime('%Y%m%dT%H%M%S')}.{moment.microsecond // 1000:03d}Z/{meter_stop}"


def _flag_unknown(samples: list[Sample]) -> list[Sample]:
    return [msgspec.structs.replace(s, flags=s.flags | FLAG_UNKNOWN_TRANSACTION) for s in samples]


async def stop_transaction(ctx: Context, p: dict[str, Any]) -> Reply:
    given = int32(p.get("transactionId"), "transactionId")
    meter_stop = int32(p.get("meterStop"), "meterStop")
    at = event_time(p.get("timestamp"), ctx.received_at)   # implausible: the receive time, flagged
    ts = at.time
    flags = at.flags
    known, connector = await _known_transaction(ctx, given)
    if known:
        tx_id: int | None = given
        uid = str(given)
        if connector is not None and ctx.state.open_tx_by_connector.get(connector) == given:
            del ctx.state.open_tx_by_connector[connector]
    else:
        # -1 or an id never given to this charger: its own session, flagged, with no 1.6 id and no
        # connector (StopTransaction names none, 1.6 §6.49), never attached to a known transaction
        # of any connector — that transaction's own stop must still apply (1.6 errata 3.18; R42).
        tx_id = None
        uid = minus_one_uid(at, p.get("timestamp"), meter_stop) if given == -1 else unknown_transaction_uid(given)
        flags |= FLAG_UNKNOWN_TRANSACTION
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
        if tx_id is None:
            # No connector to compare the register with: another session's readings say nothing.
            samples = _flag_unknown(samples)
        else:
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
    evse_id, connector_id = _evse_connector(connector)
    samples = samples_v16(p.get("meterValue") or [], received_at=ctx.received_at, connector_id=connector)
    samples = ctx.state.registers.check(evse_id, connector_id, samples)
    uid = ""
    if "transactionId" in p:
        given = int32(p["transactionId"], "transactionId")
        if (await _known_transaction(ctx, given))[0]:
            uid = str(given)
            samples = flag_outside_window(samples, *ctx.state.tx_window.get(uid, (None, None)))
        else:
            # -1 (errata 3.18) is never attached to the connector's known transaction, nor is an id
            # never given to this charger: kept and flagged (-1 with no session; an unknown id with
            # the session its stop will have).
            uid = "" if given == -1 else unknown_transaction_uid(given)
            samples = _flag_unknown(samples)
    event = MeterEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at, evse_id=evse_id,
                       connector_id=connector_id, transaction_uid=uid, samples=samples)
    # Values without a transactionId and connector-0 totals are kept, never dropped (R43 [1.6 §4.7, errata 3.15]).
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
    "SecurityEventNotification": handlers_security.security_event_notification,  # stored, confirmed (A04.FR.03)
    "SignedFirmwareStatusNotification": acknowledge("SignedFirmwareStatusNotification"),
    # Whitepaper §3.2: checked, signed by the operator CA (Rejected without one), CertificateSigned follows.
    "SignCertificate": handlers_security.sign_certificate,
}

# Transaction-related messages (1.6 §3.7): the charger retries these on failure, so they
# are answered only after their events are durable; the others are answered the same way.
TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})

# Allowed before BootNotification is Accepted (R33 [2.0.1 B01.FR.10, B02.FR.09; 1.6J errata 3.10]).
PRE_BOOT_ACTIONS = frozenset({"BootNotification"})

