"""Whole charger sessions over real sockets, stored exactly once in TimescaleDB.

The charger is the ``ocpp`` package's own ChargePoint (1.6J and 2.0.1). Each test also
replays messages as a charger does after a lost answer, and reconnects mid-transaction.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from tests.central import PASSWORD, running_central
from tests.chargers import connect_charger, iso, t0

pytestmark = pytest.mark.integration


async def _disconnects_stored(db: asyncpg.Connection, cp_id: str, count: int, timeout_s: float = 30) -> None:
    """Wait (bounded) until the server has stored ``count`` disconnects of ``cp_id``: the client's close
    returns before the server's handler has recorded its end, which a busy machine can delay past the
    next connection's "connected"."""
    deadline = time.monotonic() + timeout_s
    while await db.fetchval("SELECT count(*) FROM connection_events WHERE charge_point_id = $1 "
                            "AND event = 'disconnected'", cp_id) < count:
        assert time.monotonic() < deadline, f"{cp_id}: the disconnect was not stored"
        await asyncio.sleep(0.05)


def sv16(value: str, measurand: str = "Energy.Active.Import.Register", unit: str = "Wh",
         context: str = "Sample.Periodic", phase: str | None = None) -> dict[str, Any]:
    out = {"value": value, "measurand": measurand, "unit": unit, "context": context, "location": "Outlet"}
    if phase:
        out["phase"] = phase
    return out


async def test_ocpp16_session_is_stored_exactly_once_despite_retries_and_a_reconnect(db_url: str,
                                                                                     db: asyncpg.Connection) -> None:
    async with running_central(db_url) as central:
        await central.register("CP16", evses=2)
        await central.add_token("TAG-OK")
        start = t0()
        async with connect_charger(central.ws_base, "CP16", "1.6", password=PASSWORD) as cp:
            boot = await cp.call(call16.BootNotification(charge_point_model="M1", charge_point_vendor="V1"))
            assert boot.status == "Accepted"
            assert boot.interval == 300
            for connector in (0, 1, 2):
                await cp.call(call16.StatusNotification(connector_id=connector, error_code="NoError",
                                                        status="Available", timestamp=iso(start)))
            auth = await cp.call(call16.Authorize(id_tag="TAG-OK"))
            assert auth.id_tag_info["status"] == "Accepted"
            unknown = await cp.call(call16.Authorize(id_tag="TAG-NOPE"))
            assert unknown.id_tag_info["status"] == "Invalid"
            start_req = call16.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=1000,
                                                timestamp=iso(start))
            started = await cp.call(start_req)
            again = await cp.call(start_req)  # the answer was "lost": the charger repeats it
            assert again.transaction_id == started.transaction_id
            tx = started.transaction_id
            for i in range(1, 4):
                mv = call16.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
                    "timestamp": iso(start + timedelta(minutes=i)),
                    "sampledValue": [sv16(str(1000 + 2500 * i)), sv16("7.4", "Power.Active.Import", "kW"),
                                     sv16("32", "Current.Import", "A", phase="L1")]}])
                await cp.call(mv)
                await cp.call(mv)  # repeated after a lost answer: stored once
        await _disconnects_stored(db, "CP16", 1)
        # The charger reconnects mid-transaction: no new BootNotification (1.6J §5.4), and the
        # CSMS must remember that it was Accepted (R33).
        async with connect_charger(central.ws_base, "CP16", "1.6", password=PASSWORD) as cp:
            mv = call16.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
                "timestamp": iso(start + timedelta(minutes=4)), "sampledValue": [sv16("11000")]}])
            await cp.call(mv)
            stop = call16.StopTransaction(meter_stop=12000, timestamp=iso(start + timedelta(minutes=5)),
                                          transaction_id=tx, reason="EVDisconnected", id_tag="TAG-OK",
                                          transaction_data=[
                                              {"timestamp": iso(start), "sampledValue": [
                                                  sv16("1000", context="Transaction.Begin")]},
                                              {"timestamp": iso(start + timedelta(minutes=5)), "sampledValue": [
                                                  sv16("12000", context="Transaction.End")]}])
            stopped = await cp.call(stop)
            assert stopped.id_tag_info["status"] == "Accepted"
            await cp.call(stop)  # repeated: still one session, no doubled samples

    rows = await db.fetch("SELECT * FROM transactions WHERE charge_point_id = 'CP16'")
    assert len(rows) == 1
    row = rows[0]
    assert row["transaction_uid"] == str(tx)
    assert row["started_at"] == start
    assert row["stopped_at"] == start + timedelta(minutes=5)
    assert row["energy_wh"] == 11000
    assert row["stop_reason"] == "EVDisconnected"
    assert (row["evse_id"], row["connector_id"], row["id_token"]) == (1, 1, "TAG-OK")
    samples = await db.fetch("SELECT measurand, phase, context, value, unit FROM meter_samples "
                             "WHERE charge_point_id = 'CP16' ORDER BY time, measurand")
    # 3 periodic messages × 3 values + 1 after reconnect + Begin/End from transactionData
    assert len(samples) == 3 * 3 + 1 + 2
    power = [s for s in samples if s["measurand"] == "Power.Active.Import"]
    assert {(s["value"], s["unit"]) for s in power} == {(7400.0, "W")}
    statuses = await db.fetchval("SELECT count(*) FROM connector_status WHERE charge_point_id = 'CP16'")
    assert statuses == 3
    events = [r["event"] for r in await db.fetch(
        "SELECT event FROM connection_events WHERE charge_point_id = 'CP16' ORDER BY time")]
    assert events == ["connected", "boot", "disconnected", "connected", "disconnected"]
    assert await db.fetchval("SELECT registration_status FROM charge_points WHERE id = 'CP16'") == "Accepted"


def sv201(value: float, context: str, measurand: str = "Energy.Active.Import.Register",
          unit: str = "kWh", multiplier: int | None = None) -> dict[str, Any]:
    uom: dict[str, Any] = {"unit": unit}
    if multiplier is not None:
        uom["multiplier"] = multiplier
    return {"value": value, "context": context, "measurand": measurand, "unitOfMeasure": uom}


async def test_ocpp201_transaction_events_merge_into_one_session(db_url: str, db: asyncpg.Connection) -> None:
    async with running_central(db_url) as central:
        await central.register("CP201", evses=1)
        await central.add_token("RFID-1")
        start = t0()
        tx_id = "5f8e6c1a-8f2b-4b64-9c3e-2b7f8f1d0a11"
        info = {"transactionId": tx_id}
        async with connect_charger(central.ws_base, "CP201", "2.0.1", password=PASSWORD) as cp:
            boot = await cp.call(call201.BootNotification(
                charging_station={"model": "M2", "vendor_name": "V2", "serial_number": "SN-9"}, reason="PowerUp"))
            assert boot.status == "Accepted"
            await cp.call(call201.StatusNotification(timestamp=iso(start), connector_status="Available",
                                                     evse_id=1, connector_id=1))
            auth = await cp.call(call201.Authorize(id_token={"id_token": "RFID-1", "type": "ISO14443"}))
            assert auth.id_token_info["status"] == "Accepted"
            started = call201.TransactionEvent(
                event_type="Started", timestamp=iso(start), trigger_reason="Authorized", seq_no=0,
                transaction_info={**info, "charging_state": "Charging"},
                evse={"id": 1, "connector_id": 1}, id_token={"id_token": "RFID-1", "type": "ISO14443"},
                meter_value=[{"timestamp": iso(start),
                              "sampled_value": [sv201(5.0, "Transaction.Begin")]}])
            answer = await cp.call(started)
            assert answer.id_token_info["status"] == "Accepted"
            for seq in range(1, 4):
                updated = call201.TransactionEvent(
                    event_type="Updated", timestamp=iso(start + timedelta(minutes=seq)),
                    trigger_reason="MeterValuePeriodic", seq_no=seq, transaction_info=info,
                    meter_value=[{"timestamp": iso(start + timedelta(minutes=seq)), "sampled_value": [
                        sv201(5.0 + seq, "Sample.Periodic"),
                        sv201(11, "Sample.Periodic", "Power.Active.Import", "kW")]}])
                await cp.call(updated)
                await cp.call(updated)  # same seqNo again: stored once
        async with connect_charger(central.ws_base, "CP201", "2.0.1", password=PASSWORD) as cp:
            ended = call201.TransactionEvent(
                event_type="Ended", timestamp=iso(start + timedelta(minutes=5)), trigger_reason="EVDeparted",
                seq_no=4, transaction_info={**info, "stopped_reason": "EVDisconnected"}, offline=True,
                meter_value=[{"timestamp": iso(start + timedelta(minutes=5)),
                              "sampled_value": [sv201(9500, "Transaction.End", unit="Wh")]}])
            await cp.call(ended)
            await cp.call(ended)

    row = await db.fetchrow("SELECT * FROM transactions WHERE charge_point_id = 'CP201'")
    assert row is not None
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE charge_point_id = 'CP201'") == 1
    assert row["transaction_uid"] == tx_id
    assert row["started_at"] == start
    assert row["stopped_at"] == start + timedelta(minutes=5)
    assert float(row["energy_wh"]) == 4500.0
    assert row["stop_reason"] == "EVDisconnected"
    assert row["evse_id"] == 1
    assert row["last_seq_no"] == 4
    assert row["offline"] is True
    assert await db.fetchval("SELECT count(*) FROM transaction_events WHERE transaction_uid = $1", tx_id) == 5
    samples = await db.fetch("SELECT measurand, value, unit FROM meter_samples WHERE transaction_uid = $1", tx_id)
    assert len(samples) == 1 + 3 * 2 + 1
    assert {s["value"] for s in samples if s["measurand"] == "Power.Active.Import"} == {11000.0}
