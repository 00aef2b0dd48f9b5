"""Onboarding, tolerant chargers, data-quality flags and graceful shutdown, over real sockets."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import websockets

from schemas.events import FLAG_OUTSIDE_TRANSACTION, FLAG_REGISTER_DECREASED
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

BOOT = [2, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]


async def _call(ws: websockets.ClientConnection, frame: list[object]) -> list[object]:
    await ws.send(json.dumps(frame))
    return list(json.loads(await asyncio.wait_for(ws.recv(), 10)))


async def test_unknown_charger_is_onboarded_pending_until_an_operator_accepts_it(db_url: str) -> None:
    async with running_central(db_url, onboard_unknown=True) as central:
        url = f"{central.ws_base}/NEWCOMER"
        # Onboarding pins the first password presented (trust on first use; tests/test_handshake_security.py).
        auth = basic_auth("NEWCOMER", PASSWORD)
        async with websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=auth) as ws:  # type: ignore[list-item]
            boot = await _call(ws, BOOT)
            assert boot[2]["status"] == "Pending"  # type: ignore[index]
            assert boot[2]["interval"] == 60  # type: ignore[index]
            refused = await _call(ws, [2, "hb", "Heartbeat", {}])
            assert refused[:3] == [4, "hb", "SecurityError"]
        async with central.api() as api:
            reply = await api.post("/api/v1/charge-points/NEWCOMER/admission", json={"admission": "accept"})
            assert reply.status_code == 200
        async with websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=auth) as ws:  # type: ignore[list-item]
            boot = await _call(ws, BOOT)
            assert boot[2]["status"] == "Accepted"  # type: ignore[index]


async def test_tolerant_charger_is_accepted_and_counted_strict_one_is_refused(db_url: str,
                                                                              db: asyncpg.Connection) -> None:
    # A 1.6 value sent as a JSON number instead of a string: a known field bug (lbbrhzn#210).
    numeric = {"connectorId": 1, "meterValue": [{"timestamp": iso(datetime.now(UTC)),
                                                 "sampledValue": [{"value": 1234, "unit": "Wh"}]}]}
    async with running_central(db_url) as central:
        await central.register("LAX", tolerant=True)
        await central.register("STRICT")
        for cp, expected in (("LAX", 3), ("STRICT", 4)):
            async with websockets.connect(f"{central.ws_base}/{cp}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth(cp, PASSWORD)) as ws:
                await _call(ws, BOOT)
                reply = await _call(ws, [2, "mv", "MeterValues", numeric])
                assert reply[0] == expected
                if expected == 4:
                    assert reply[2] == "TypeConstraintViolation"
        async with central.api() as api:
            metrics = (await api.get("/metrics")).text
        assert 'csms_ocpp_schema_violations_tolerated_total{action="MeterValues"} 1.0' in metrics
    assert await db.fetchval("SELECT value FROM meter_samples WHERE charge_point_id = 'LAX'") == 1234.0
    assert await db.fetchval("SELECT count(*) FROM charger_messages WHERE action = 'SchemaViolation'") == 1
    assert await db.fetchval("SELECT count(*) FROM meter_samples WHERE charge_point_id = 'STRICT'") == 0


async def test_data_quality_flags_are_stored_and_counted(db_url: str, db: asyncpg.Connection) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def mv(tx: int, ts: datetime, wh: int) -> list[object]:
        return [2, f"mv{wh}", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
            {"timestamp": iso(ts), "sampledValue": [{"value": str(wh)}]}]}]

    async with running_central(db_url) as central:
        await central.register("DQ")
        await central.add_token("T")
        async with websockets.connect(f"{central.ws_base}/DQ", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("DQ", PASSWORD)) as ws:
            await _call(ws, BOOT)
            started = await _call(ws, [2, "st", "StartTransaction", {"connectorId": 1, "idTag": "T",
                                                                     "meterStart": 5000, "timestamp": iso(start)}])
            tx = started[2]["transactionId"]  # type: ignore[index]
            await _call(ws, mv(tx, start + timedelta(minutes=1), 6000))
            await _call(ws, mv(tx, start + timedelta(minutes=2), 5500))   # register went backwards
            await _call(ws, mv(tx, start - timedelta(minutes=5), 4000))   # before the transaction began
            stop = await _call(ws, [2, "sp", "StopTransaction", {"transactionId": tx, "meterStop": 4000,
                                                                 "timestamp": iso(start + timedelta(minutes=3))}])
            assert stop[0] == 3
        async with central.api() as api:
            metrics = (await api.get("/metrics")).text
    rows = await db.fetch("SELECT value, quality_flags FROM meter_samples WHERE charge_point_id = 'DQ'")
    flags: dict[float, int] = {r["value"]: r["quality_flags"] for r in rows}
    assert flags[6000.0] == 0
    assert flags[5500.0] & FLAG_REGISTER_DECREASED
    assert flags[4000.0] & FLAG_OUTSIDE_TRANSACTION
    assert await db.fetchval("SELECT quality_flags FROM transactions WHERE charge_point_id = 'DQ'") != 0
    assert 'csms_data_quality_flags_total{kind="register_decreased"} 1.0' in metrics
    assert 'csms_data_quality_flags_total{kind="meter_stop_below_start"} 1.0' in metrics


async def test_shutdown_closes_chargers_with_1001(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("BYE")
        ws = await websockets.connect(f"{central.ws_base}/BYE", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("BYE", PASSWORD))
        await _call(ws, BOOT)
        stopping = asyncio.create_task(central.system.stop())
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 15)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001  # going away (RFC 6455 §7.4.1)
        await stopping
