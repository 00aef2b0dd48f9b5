"""Realistic charger traffic for dashboard and alert tests: boots, statuses, sessions with
meter values, a fault and its recovery, heartbeats — on OCPP 1.6J and 2.0.1."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets

from tests.chargers import basic_auth, iso


class _Wire:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        await self.ws.send(json.dumps([2, f"m{self.n}", action, payload]))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
        if reply[0] != 3:
            raise AssertionError(f"{action} answered {reply}")
        return dict(reply[2])


def _sv16(wh: float, w: float, soc: int) -> list[dict[str, Any]]:
    return [{"value": f"{wh:.0f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": f"{w:.0f}", "measurand": "Power.Active.Import", "unit": "W"},
            {"value": str(soc), "measurand": "SoC", "unit": "Percent"}]


def _sv201(wh: float, w: float, soc: int, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
    return [{"value": wh, "context": context, "measurand": "Energy.Active.Import.Register",
             "unitOfMeasure": {"unit": "Wh"}},
            {"value": w, "context": context, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
            {"value": soc, "context": context, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}}]


async def charger_16(url: str, cp_id: str, password: str, *, start: datetime, samples: int = 12,
                     token: str = "TRAFFIC-TAG") -> None:
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, password)) as ws:
        w = _Wire(ws)
        await w.call("BootNotification", {"chargePointVendor": "Traffic", "chargePointModel": "T16"})
        for c in (0, 1, 2):
            await w.call("StatusNotification", {"connectorId": c, "errorCode": "NoError", "status": "Available",
                                                "timestamp": iso(start)})
        await w.call("Authorize", {"idTag": token})
        await w.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                            "timestamp": iso(start + timedelta(minutes=1))})
        tx = (await w.call("StartTransaction", {"connectorId": 1, "idTag": token, "meterStart": 10_000,
                                                "timestamp": iso(start + timedelta(minutes=2))}))["transactionId"]
        await w.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                            "timestamp": iso(start + timedelta(minutes=2))})
        wh = 10_000.0
        for i in range(samples):
            wh += 11_000 / 12
            await w.call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
                {"timestamp": iso(start + timedelta(minutes=3 + 5 * i)), "sampledValue": _sv16(wh, 11_000, 20 + i)}]})
        end = start + timedelta(minutes=3 + 5 * samples)
        await w.call("StopTransaction", {"transactionId": tx, "meterStop": int(wh), "timestamp": iso(end),
                                         "reason": "EVDisconnected"})
        await w.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                            "timestamp": iso(end + timedelta(minutes=10))})
        # A fault on connector 2 and its recovery.
        await w.call("StatusNotification", {"connectorId": 2, "errorCode": "GroundFailure", "status": "Faulted",
                                            "timestamp": iso(end + timedelta(minutes=15)), "vendorId": "traffic",
                                            "vendorErrorCode": "CX002"})
        await w.call("StatusNotification", {"connectorId": 2, "errorCode": "NoError", "status": "Available",
                                            "timestamp": iso(end + timedelta(minutes=45))})
        await w.call("Heartbeat", {})
        # A deliberately bad message, so that error metrics have data.
        await ws.send(json.dumps([2, "bad", "Heartbeat", {"surprise": True}]))
        await asyncio.wait_for(ws.recv(), 15)


async def charger_201(url: str, cp_id: str, password: str, *, start: datetime, samples: int = 12,
                      token: str = "TRAFFIC-TAG") -> None:
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, password)) as ws:
        w = _Wire(ws)
        await w.call("BootNotification", {"chargingStation": {"model": "T201", "vendorName": "Traffic"},
                                          "reason": "PowerUp"})
        for evse in (1, 2):
            await w.call("StatusNotification", {"timestamp": iso(start), "connectorStatus": "Available",
                                                "evseId": evse, "connectorId": 1})
        await w.call("Authorize", {"idToken": {"idToken": token, "type": "ISO14443"}})
        tx = str(uuid.uuid4())
        await w.call("StatusNotification", {"timestamp": iso(start + timedelta(minutes=1)),
                                            "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1})
        wh = 20_000.0
        await w.call("TransactionEvent", {
            "eventType": "Started", "timestamp": iso(start + timedelta(minutes=2)), "triggerReason": "Authorized",
            "seqNo": 0, "transactionInfo": {"transactionId": tx, "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": token, "type": "ISO14443"},
            "meterValue": [{"timestamp": iso(start + timedelta(minutes=2)),
                            "sampledValue": _sv201(wh, 0, 30, "Transaction.Begin")}]})
        for i in range(samples):
            wh += 22_000 / 12
            await w.call("TransactionEvent", {
                "eventType": "Updated", "timestamp": iso(start + timedelta(minutes=3 + 5 * i)),
                "triggerReason": "MeterValuePeriodic", "seqNo": i + 1, "transactionInfo": {"transactionId": tx},
                "meterValue": [{"timestamp": iso(start + timedelta(minutes=3 + 5 * i)),
                                "sampledValue": _sv201(wh, 22_000, 30 + i)}]})
        end = start + timedelta(minutes=3 + 5 * samples)
        await w.call("TransactionEvent", {
            "eventType": "Ended", "timestamp": iso(end), "triggerReason": "EVDeparted", "seqNo": samples + 1,
            "transactionInfo": {"transactionId": tx, "stoppedReason": "EVDisconnected"},
            "meterValue": [{"timestamp": iso(end), "sampledValue": _sv201(wh, 0, 30 + samples, "Transaction.End")}]})
        await w.call("StatusNotification", {"timestamp": iso(end + timedelta(minutes=5)),
                                            "connectorStatus": "Available", "evseId": 1, "connectorId": 1})
        await w.call("StatusNotification", {"timestamp": iso(end + timedelta(minutes=20)),
                                            "connectorStatus": "Faulted", "evseId": 2, "connectorId": 1})
        await w.call("Heartbeat", {})


async def drive_fleet(url: str, password: str, chargers_16: list[str], chargers_201: list[str],
                      *, start: datetime | None = None) -> None:
    """Run every charger once, concurrently; sessions start ``start`` (default: 3 hours ago)."""
    t0 = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    await asyncio.gather(*(charger_16(url, cp, password, start=t0 + timedelta(minutes=i))
                           for i, cp in enumerate(chargers_16)),
                         *(charger_201(url, cp, password, start=t0 + timedelta(minutes=i))
                           for i, cp in enumerate(chargers_201)))
