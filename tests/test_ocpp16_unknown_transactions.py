"""1.6 transaction messages for a transactionId the central system does not know, through the real
gateway and database: ``-1`` (the charger never got an id, errata 3.18; R42) and ids never handed to
this charger. Such a message is stored as its own session, flagged, and never changes a transaction
that has its own known id."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from csms.ocpp.handlers_v16 import minus_one_uid
from csms.ocpp.normalise import event_time
from schemas.events import FLAG_UNKNOWN_TRANSACTION
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

BOOT = [2, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
_ids = itertools.count(1)


@pytest.fixture
async def central(db_url: str) -> AsyncIterator[RunningCentral]:
    async with running_central(db_url) as c:
        for cp in ("TWO", "OTHER"):
            await c.register(cp, evses=2)
        for tag in ("T1", "T2", "TAG-X"):
            await c.add_token(tag)
        yield c


async def _open(central: RunningCentral, cp: str) -> ClientConnection:
    ws = await websockets.connect(f"{central.ws_base}/{cp}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp, PASSWORD))
    assert (await _call(ws, "BootNotification", BOOT[3]))["status"] == "Accepted"
    return ws


async def _call(ws: ClientConnection, action: str, payload: object) -> dict[str, Any]:
    """One CALL; the CALLRESULT's payload (the test fails on a CALLERROR)."""
    message_id = f"m{next(_ids)}"
    await ws.send(json.dumps([2, message_id, action, payload]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply[:2] == [3, message_id], reply
    answer: dict[str, Any] = reply[2]
    return answer


async def _api_rows(central: RunningCentral, cp: str) -> dict[str, dict[str, Any]]:
    async with central.api() as api:
        reply = await api.get("/api/v1/transactions", params={"charge_point_id": cp})
    assert reply.status_code == 200, reply.text
    return {row["transaction_uid"]: row for row in reply.json()}


async def _sql_rows(db: asyncpg.Connection, cp: str) -> dict[str, asyncpg.Record]:
    rows = await db.fetch("SELECT * FROM transactions WHERE charge_point_id = $1", cp)
    return {r["transaction_uid"]: r for r in rows}


def _api_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _start(connector: int, tag: str, meter: int, at: datetime) -> dict[str, Any]:
    return {"connectorId": connector, "idTag": tag, "meterStart": meter, "timestamp": iso(at)}


async def test_minus_one_stop_is_its_own_session_and_the_known_one_keeps_its_real_stop(
        central: RunningCentral, db: asyncpg.Connection) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    ws = await _open(central, "TWO")
    try:
        tx1 = (await _call(ws, "StartTransaction", _start(1, "T1", 1000, t0)))["transactionId"]
        # Connector 2 ran a session whose StartTransaction never reached us: the charger sends -1
        # (errata 3.18). Its register reading (500) is below tx 1's start: merged, it would give
        # tx 1 a negative energy.
        minus_one_stop = {"transactionId": -1, "meterStop": 500, "timestamp": iso(t0 + timedelta(minutes=10)),
                          "reason": "EVDisconnected", "idTag": "TAG-X",
                          "transactionData": [{"timestamp": iso(t0 + timedelta(minutes=10)),
                                               "sampledValue": [{"value": "500"}]}]}
        assert await _call(ws, "StopTransaction", minus_one_stop) == {"idTagInfo": {"status": "Accepted"}}
        # MeterValues with -1 on connector 1, which has a known transaction: not attached to it.
        assert await _call(ws, "MeterValues", {"connectorId": 1, "transactionId": -1, "meterValue": [
            {"timestamp": iso(t0 + timedelta(minutes=11)), "sampledValue": [{"value": "777"}]}]}) == {}

        api = await _api_rows(central, "TWO")
        assert len(api) == 2
        (minus_uid,) = api.keys() - {str(tx1)}
        assert minus_uid.startswith("-1@")
        # tx 1: untouched until its own stop.
        assert api[str(tx1)] | {"started_at": None} == {
            "charge_point_id": "TWO", "transaction_uid": str(tx1), "evse_id": 1, "connector_id": 1,
            "id_token": "T1", "started_at": None, "stopped_at": None, "meter_start_wh": 1000.0,
            "meter_stop_wh": None, "energy_wh": None, "stop_reason": None, "offline": False, "quality_flags": 0}
        # The -1 session: separate, connector unknown (1.6 StopTransaction names none), flagged.
        minus = api[minus_uid]
        assert (minus["evse_id"], minus["connector_id"], minus["started_at"], minus["meter_start_wh"]) == (
            None, None, None, None)
        assert (minus["meter_stop_wh"], minus["energy_wh"], minus["stop_reason"]) == (500.0, None, "EVDisconnected")
        assert minus["stopped_at"] == _api_time(t0 + timedelta(minutes=10))
        assert minus["quality_flags"] & FLAG_UNKNOWN_TRANSACTION

        sql = await _sql_rows(db, "TWO")
        assert sql[minus_uid]["ocpp16_transaction_id"] is None   # it has no id: never one of ours
        assert sql[minus_uid]["stop_id_token"] == "TAG-X"
        assert sql[str(tx1)]["ocpp16_transaction_id"] == tx1
        assert sql[str(tx1)]["stop_id_token"] is None
        samples = await db.fetch("SELECT transaction_uid, value, quality_flags FROM meter_samples "
                                 "WHERE charge_point_id = 'TWO' ORDER BY value")
        assert [(s["transaction_uid"], s["value"]) for s in samples] == [(minus_uid, 500.0), ("", 777.0)]
        assert all(s["quality_flags"] & FLAG_UNKNOWN_TRANSACTION for s in samples)

        # The same -1 stop again (a retry with a new message id, R41): stored once.
        await _call(ws, "StopTransaction", minus_one_stop)
        assert set(await _sql_rows(db, "TWO")) == {str(tx1), minus_uid}
        assert await db.fetchval("SELECT count(*) FROM meter_samples WHERE charge_point_id = 'TWO'") == 2

        # tx 1's real stop is applied.
        await _call(ws, "StopTransaction", {"transactionId": tx1, "meterStop": 4000, "reason": "Local",
                                            "timestamp": iso(t0 + timedelta(minutes=20))})
    finally:
        await ws.close()
    api = await _api_rows(central, "TWO")
    assert set(api) == {str(tx1), minus_uid}
    done = api[str(tx1)]
    assert (done["meter_start_wh"], done["meter_stop_wh"], done["energy_wh"], done["stop_reason"]) == (
        1000.0, 4000.0, 3000.0, "Local")
    assert done["stopped_at"] == _api_time(t0 + timedelta(minutes=20))
    assert (done["connector_id"], done["quality_flags"]) == (1, 0)
    assert (await _sql_rows(db, "TWO"))[str(tx1)]["stop_id_token"] is None
    assert api[minus_uid]["meter_stop_wh"] == 500.0   # and the -1 session is unchanged


async def test_an_id_given_to_another_charger_or_never_given_is_not_attached(
        central: RunningCentral, db: asyncpg.Connection) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    other = await _open(central, "OTHER")
    ws = await _open(central, "TWO")
    try:
        theirs = (await _call(other, "StartTransaction", _start(1, "T2", 100, t0)))["transactionId"]
        mine = (await _call(ws, "StartTransaction", _start(1, "T1", 1000, t0)))["transactionId"]
        never = 2_000_000_000  # never allocated to anyone
        for tx, meter in ((theirs, 150), (never, 160)):
            # MeterValues and the stop of an id this charger was never given: answered, kept, flagged.
            assert await _call(ws, "MeterValues", {"connectorId": 2, "transactionId": tx, "meterValue": [
                {"timestamp": iso(t0 + timedelta(minutes=5)), "sampledValue": [{"value": str(meter)}]}]}) == {}
            assert await _call(ws, "StopTransaction", {"transactionId": tx, "meterStop": meter,
                                                       "timestamp": iso(t0 + timedelta(minutes=6))}) == {}
        # ...and its retry is the same session.
        await _call(ws, "StopTransaction", {"transactionId": never, "meterStop": 160,
                                            "timestamp": iso(t0 + timedelta(minutes=6))})
        rows = await _sql_rows(db, "TWO")
        assert set(rows) == {str(mine), f"unknown-{theirs}", f"unknown-{never}"}
        for tx, meter in ((theirs, 150), (never, 160)):
            row = rows[f"unknown-{tx}"]
            assert (row["ocpp16_transaction_id"], row["evse_id"], row["connector_id"]) == (None, None, None)
            assert (row["meter_stop_wh"], row["started_at"]) == (meter, None)
            assert row["quality_flags"] & FLAG_UNKNOWN_TRANSACTION
        assert (rows[str(mine)]["stopped_at"], rows[str(mine)]["quality_flags"]) == (None, 0)
        samples = await db.fetch("SELECT transaction_uid, quality_flags FROM meter_samples "
                                 "WHERE charge_point_id = 'TWO' ORDER BY value")
        assert [s["transaction_uid"] for s in samples] == [f"unknown-{theirs}", f"unknown-{never}"]
        assert all(s["quality_flags"] & FLAG_UNKNOWN_TRANSACTION for s in samples)
        # The other charger's transaction is untouched, and its real stop applies.
        other_row = (await _sql_rows(db, "OTHER"))[str(theirs)]
        assert (other_row["stopped_at"], other_row["meter_stop_wh"]) == (None, None)
        await _call(other, "StopTransaction", {"transactionId": theirs, "meterStop": 900,
                                               "timestamp": iso(t0 + timedelta(minutes=30))})
        other_row = (await _sql_rows(db, "OTHER"))[str(theirs)]
        assert (other_row["meter_stop_wh"], other_row["energy_wh"], other_row["quality_flags"]) == (900, 800, 0)
    finally:
        await ws.close()
        await other.close()


async def test_a_known_transaction_is_still_recognised_after_a_reconnect(
        central: RunningCentral, db: asyncpg.Connection) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    ws = await _open(central, "TWO")
    try:
        tx = (await _call(ws, "StartTransaction", _start(2, "T1", 1000, t0)))["transactionId"]
    finally:
        await ws.close()
    ws = await _open(central, "TWO")   # a new connection: its protocol state knows no transaction
    try:
        await _call(ws, "MeterValues", {"connectorId": 2, "transactionId": tx, "meterValue": [
            {"timestamp": iso(t0 + timedelta(minutes=5)), "sampledValue": [{"value": "1500"}]}]})
        await _call(ws, "StopTransaction", {"transactionId": tx, "meterStop": 2500,
                                            "timestamp": iso(t0 + timedelta(minutes=9))})
    finally:
        await ws.close()
    rows = await _sql_rows(db, "TWO")
    assert set(rows) == {str(tx)}
    row = rows[str(tx)]
    assert (row["connector_id"], row["meter_stop_wh"], row["energy_wh"], row["quality_flags"]) == (1, 2500, 1500, 0)
    assert row["evse_id"] == 2
    sample = await db.fetchrow("SELECT transaction_uid, quality_flags FROM meter_samples WHERE charge_point_id = 'TWO'")
    assert sample is not None
    assert (sample["transaction_uid"], sample["quality_flags"]) == (str(tx), 0)


def test_minus_one_uid_is_the_same_for_every_retry_and_fits_the_column() -> None:
    received = [datetime(2025, 3, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=n) for n in range(3)]
    for raw in ("2025-03-01T11:59:59.123456Z", "2999-01-01T00:00:00Z", "not a time"):
        # A retry arrives later (another receive time); an implausible timestamp is replaced by it.
        uids = {minus_one_uid(event_time(raw, r), raw, -2**31) for r in received}
        assert len(uids) == 1, raw
        assert len(uids.pop()) <= 36
    assert minus_one_uid(event_time("2025-03-01T11:59:59.123456Z", received[0]), "2025-03-01T11:59:59.123456Z",
                         500) == "-1@20250301T115959.123Z/500"
    # Two stops with the same time but other readings are other sessions.
    at = event_time("2025-03-01T11:59:59Z", received[0])
    assert minus_one_uid(at, "2025-03-01T11:59:59Z", 1) != minus_one_uid(at, "2025-03-01T11:59:59Z", 2)


async def test_a_stop_retried_on_a_new_connection_stores_its_samples_once(
        central: RunningCentral, db: asyncpg.Connection) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    stop: dict[str, Any] = {"meterStop": 2500, "timestamp": iso(t0 + timedelta(minutes=9)), "transactionData": [
        {"timestamp": iso(t0), "sampledValue": [{"value": "1000", "context": "Transaction.Begin"}]},
        {"timestamp": iso(t0 + timedelta(minutes=9)),
         "sampledValue": [{"value": "2500", "context": "Transaction.End"}]}]}
    ws = await _open(central, "TWO")
    try:
        stop["transactionId"] = (await _call(ws, "StartTransaction", _start(2, "T1", 1000, t0)))["transactionId"]
        await _call(ws, "StopTransaction", stop)
    finally:
        await ws.close()   # as if the answer had been lost: the charger sends the stop again
    ws = await _open(central, "TWO")
    try:
        await _call(ws, "StopTransaction", stop)
    finally:
        await ws.close()
    samples = await db.fetch("SELECT evse_id, connector_id, transaction_uid FROM meter_samples "
                             "WHERE charge_point_id = 'TWO'")
    assert sorted(tuple(s) for s in samples) == [(2, 1, str(stop["transactionId"]))] * 2
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE charge_point_id = 'TWO'") == 1
