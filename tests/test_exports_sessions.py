"""Sessions CSV (generic and EV Charging Use Spec layouts) from sessions driven through the real
OCPP interface with charger-side timestamps; headers byte-exact, every value by hand."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from csms.store.registry import ChargePointSpec, EvseSpec, LocationSpec, add_charge_point, add_id_token, upsert_location
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

GENERIC_HEADER = ("session_id,charge_point_id,evse_uid,evse_id,connector_id,location_id,id_token_type,payment_method,"
                  "started_at,stopped_at,duration_s,energy_kwh,meter_start_wh,meter_stop_wh,peak_kw,stop_reason,"
                  "ocpp_version")
EVCU_HEADER = ("session_id,station_id,port_number,plug_start_datetime,plug_end_datetime,charge_start_datetime,"
               "session_duration,charging_duration,energy_kwh,peak_kw,total_fee_charged,charge_end_datetime,energy_fee,"
               "session_fee,time_fee,session_initiator,user_id,successful_completion,ended_by,start_soc,end_soc")
DAY = datetime(2026, 8, 10, tzinfo=UTC)


class Wire:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws, self.n = ws, 0

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        await self.ws.send(json.dumps([2, f"s{self.n}", action, payload]))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
        assert reply[0] == 3, (action, reply)
        return dict(reply[2])


def at(hours: float) -> str:
    return iso(DAY + timedelta(hours=hours))


async def _charger_16(ws_base: str) -> list[int]:
    """Session A (10:00–11:30, 22.5 kWh, peak 18 kW, SoC 20 → 80 %), open session C (13:00), and a
    session on the 12th outside the window."""
    async with websockets.connect(f"{ws_base}/SE16", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth("SE16", PASSWORD)) as ws:
        w = Wire(ws)
        await w.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        a = (await w.call("StartTransaction", {"connectorId": 1, "idTag": "TAG-RFID", "meterStart": 1000,
                                               "timestamp": at(10)}))["transactionId"]
        for hours, wh, watts, soc in ((10.5, 8_500, 15_000, 20), (11, 17_500, 18_000, 60), (11.25, 21_000, 14_000, 80)):
            await w.call("MeterValues", {"connectorId": 1, "transactionId": a, "meterValue": [{
                "timestamp": at(hours), "sampledValue": [
                    {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"},
                    {"value": str(soc), "measurand": "SoC", "unit": "Percent"}]}]})
        await w.call("StopTransaction", {"transactionId": a, "meterStop": 23_500, "timestamp": at(11.5),
                                         "reason": "EVDisconnected"})
        c = (await w.call("StartTransaction", {"connectorId": 1, "idTag": "TAG-RFID", "meterStart": 23_500,
                                               "timestamp": at(13)}))["transactionId"]
        d = (await w.call("StartTransaction", {"connectorId": 2, "idTag": "TAG-RFID", "meterStart": 0,
                                               "timestamp": at(48)}))["transactionId"]
        await w.call("StopTransaction", {"transactionId": d, "meterStop": 5000, "timestamp": at(49)})
        return [int(a), int(c)]


async def _charger_201(ws_base: str) -> None:
    """Session B: 12:00–12:45, 0.3 kWh (below 0.5 kWh: not successful), peak 7 kW, SoC 50 → 52 %."""
    def mv(hours: float, wh: float, context: str, watts: float, soc: int) -> list[dict[str, Any]]:
        return [{"timestamp": at(hours), "sampledValue": [
            {"value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
             "unitOfMeasure": {"unit": "Wh"}},
            {"value": watts, "context": context, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
            {"value": soc, "context": context, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}}]}]

    async with websockets.connect(f"{ws_base}/SE201", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  additional_headers=basic_auth("SE201", PASSWORD)) as ws:
        w = Wire(ws)
        await w.call("BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
        await w.call("TransactionEvent", {
            "eventType": "Started", "timestamp": at(12), "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": "SE201-TX", "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "TAG-APP", "type": "Central"},
            "meterValue": mv(12, 0, "Transaction.Begin", 0, 50)})
        await w.call("TransactionEvent", {
            "eventType": "Updated", "timestamp": at(12.25), "triggerReason": "MeterValuePeriodic", "seqNo": 1,
            "transactionInfo": {"transactionId": "SE201-TX"},
            "meterValue": mv(12.25, 200, "Sample.Periodic", 7000, 51)})
        await w.call("TransactionEvent", {
            "eventType": "Ended", "timestamp": at(12.75), "triggerReason": "StopAuthorized", "seqNo": 2,
            "transactionInfo": {"transactionId": "SE201-TX", "stoppedReason": "Local"},
            "meterValue": mv(12.75, 300, "Transaction.End", 0, 52)})


def _rows(body: bytes) -> tuple[str, list[list[str]]]:
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM, like the EV-ChART exports
    text = body.decode("utf-8-sig")
    header, _ = text.split("\r\n", 1)
    return header, list(csv.reader(io.StringIO(text)))[1:]


async def test_sessions_csv_generic_and_evcu(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            for loc in ("LOC-A", "LOC-B"):
                await upsert_location(pool, LocationSpec(id=loc, name=loc))
            await add_charge_point(pool, ChargePointSpec(id="SE16", location_id="LOC-A", password=PASSWORD,
                                                         evses=(EvseSpec(1), EvseSpec(2))))
            await add_charge_point(pool, ChargePointSpec(id="SE201", location_id="LOC-B", password=PASSWORD))
            await add_id_token(pool, "TAG-RFID", token_type="ISO14443")
            await add_id_token(pool, "TAG-APP", token_type="Central")
            a, c = await _charger_16(central.ws_base)
            await _charger_201(central.ws_base)
            window = {"from": "2026-08-10T00:00:00Z", "to": "2026-08-11T00:00:00+00:00"}
            base = "/api/v1/reporting/exports/sessions.csv"
            async with central.api() as api:
                generic = await api.get(base, params=window)
                evcu = await api.get(base, params={**window, "schema": "evcu_session"})
                only_b = await api.get(base, params={**window, "location_id": "LOC-B"})
                errors = [await api.get(base, params=p) for p in (
                    {"from": "2026-08-10T00:00:00Z", "to": "2027-09-15T00:00:00Z"},     # > 400 days
                    {"from": "2026-08-10T00:00:00", "to": "2026-08-11T00:00:00"},       # no UTC offset
                    {"from": "2026-08-11T00:00:00Z", "to": "2026-08-10T00:00:00Z"})]    # backwards
                unknown = await api.get(base, params={**window, "location_id": ["LOC-A", "NOPE"]})
    finally:
        await pool.close()

    assert generic.status_code == 200
    assert generic.headers["content-type"].startswith("text/csv")
    header, rows = _rows(generic.content)
    assert header == GENERIC_HEADER
    assert rows == [
        [str(a), "SE16", "SE16*1", "1", "1", "LOC-A", "ISO14443", "rfid_membership", "2026-08-10T10:00:00Z",
         "2026-08-10T11:30:00Z", "5400", "22.500", "1000", "23500", "18.000", "EVDisconnected", "1.6"],
        ["SE201-TX", "SE201", "SE201*1", "1", "1", "LOC-B", "Central", "mobile_app", "2026-08-10T12:00:00Z",
         "2026-08-10T12:45:00Z", "2700", "0.300", "0", "300", "7.000", "Local", "2.0.1"],
        [str(c), "SE16", "SE16*1", "1", "1", "LOC-A", "ISO14443", "rfid_membership", "2026-08-10T13:00:00Z",
         "", "", "", "23500", "", "", "", "1.6"],
    ]
    assert b"TAG-RFID" not in generic.content
    assert b"TAG-APP" not in generic.content

    header, rows = _rows(evcu.content)
    assert header == EVCU_HEADER
    assert rows == [
        [str(a), "SE16", "1", "20260810 10:00:00 [+00:00]", "20260810 11:30:00 [+00:00]", "", "01:30:00", "",
         "22.500", "18.000", "", "", "", "", "", "rfid_membership", "", "TRUE", "EVDisconnected", "0.200", "0.800"],
        ["SE201-TX", "SE201", "1", "20260810 12:00:00 [+00:00]", "20260810 12:45:00 [+00:00]", "", "00:45:00", "",
         "0.300", "7.000", "", "", "", "", "", "mobile_app", "", "FALSE", "Local", "0.500", "0.520"],
        [str(c), "SE16", "1", "20260810 13:00:00 [+00:00]", "", "", "", "", "", "", "", "", "", "", "",
         "rfid_membership", "", "", "", "", ""],
    ]

    _, rows = _rows(only_b.content)
    assert [r[0] for r in rows] == ["SE201-TX"]
    assert [e.status_code for e in errors] == [400, 400, 400]
    assert "400 days" in errors[0].json()["detail"]
    assert "UTC offset" in errors[1].json()["detail"]
    assert unknown.status_code == 404
    assert "NOPE" in unknown.json()["detail"]
