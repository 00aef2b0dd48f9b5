"""OCPP 2.1-only charger messages over a real websocket (issue 14 item 1): each answered as 2.1 prescribes
(request and answer checked with ``jsonschema`` against the official 2.1 schemas of the ``ocpp`` package,
independently of the CSMS's own validator), stored once despite retries, readable through the API; on a
2.0.1 connection the same actions are NotImplemented ("not known by receiver", 2.0.1 Part 4 §4.3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jsonschema  # type: ignore[import-untyped]
import pytest
import websockets

from csms.ocpp.validation import load_schema
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration


def check(action: str, payload: dict[str, Any], *, response: bool) -> None:
    jsonschema.validate(payload, load_schema("2.1", action, response))


class RawCharger:
    """A 2.x charger speaking raw OCPP-J frames."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def frame(self) -> list[Any]:
        msg = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert isinstance(msg, list)
        return msg

    async def call_frame(self, action: str, payload: dict[str, Any], message_id: str | None = None) -> list[Any]:
        mid = message_id or uuid.uuid4().hex
        await self.ws.send(json.dumps([2, mid, action, payload]))
        answer = await self.frame()
        assert answer[1] == mid, answer
        return answer

    async def call(self, action: str, payload: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
        check(action, payload, response=False)
        answer = await self.call_frame(action, payload, message_id)
        assert answer[0] == 3, answer
        result: dict[str, Any] = answer[2]
        check(action, result, response=True)
        return result

    async def send(self, action: str, payload: dict[str, Any]) -> None:
        """A 2.1 SEND ([6, ...]): never answered (2.1 Part 4 §4.2.4)."""
        check(action, payload, response=False)
        await self.ws.send(json.dumps([6, uuid.uuid4().hex, action, payload]))


@contextlib.asynccontextmanager
async def raw_charger(url: str, cp_id: str, version: str) -> AsyncIterator[RawCharger]:
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, PASSWORD), open_timeout=10) as ws:
        assert ws.subprotocol == f"ocpp{version}"
        yield RawCharger(ws)


BOOT = {"reason": "PowerUp", "chargingStation": {"model": "M21", "vendorName": "V21"}}


def messages(now: datetime) -> dict[str, dict[str, Any]]:
    """One valid request of every 2.1-only charger→CSMS CALL."""
    return {
        "NotifySettlement": {"transactionId": "TX-21", "pspRef": "PSP-1", "status": "Settled",
                             "settlementAmount": 12.34, "settlementTime": iso(now), "receiptId": "R-1",
                             "vatNumber": "NL123456789B01",
                             "vatCompany": {"name": "ACME", "address1": "Main 1", "city": "Arnhem",
                                            "country": "NL"}},
        "NotifyDERAlarm": {"controlType": "HVMustTrip", "gridEventFault": "OverVoltage", "alarmEnded": False,
                           "timestamp": iso(now), "extraInfo": "253 V"},
        "NotifyDERStartStop": {"controlId": "FPF-1", "started": True, "timestamp": iso(now),
                               "supersededIds": ["FPF-0"]},
        "ReportDERControl": {"requestId": 42, "fixedPFInject": [
            {"id": "FPF-1", "isDefault": False, "isSuperseded": False,
             "fixedPF": {"priority": 1, "displacement": 0.95, "excitation": True}}]},
        "NotifyPriorityCharging": {"transactionId": "TX-21", "activated": True},
        "BatterySwap": {"eventType": "BatteryIn", "requestId": 5, "idToken": {"idToken": "SWAP-1", "type": "Central"},
                        "batteryData": [{"evseId": 1, "serialNumber": "B-1", "soC": 20.5, "soH": 97.0},
                                        {"evseId": 2, "serialNumber": "B-2", "soC": 35.0, "soH": 91.5,
                                         "productionDate": "2024-01-02T00:00:00.000Z"}]},
        "PullDynamicScheduleUpdate": {"chargingProfileId": 9},
        "GetCertificateChainStatus": {"certificateStatusRequests": [
            {"source": "OCSP", "urls": ["http://ocsp.example/"],
             "certificateHashData": {"hashAlgorithm": "SHA256", "issuerNameHash": "aa", "issuerKeyHash": "bb",
                                     "serialNumber": "01"}}]},
        "VatNumberValidation": {"vatNumber": "NL123456789B01", "evseId": 1},
    }


async def test_every_21_only_message_is_answered_validly_and_stored_once(db_url: str,
                                                                         db: asyncpg.Connection) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    reqs = messages(now)
    async with running_central(db_url) as central:
        await central.register("CP21", evses=2)
        async with raw_charger(central.ws_base, "CP21", "2.1") as cp:
            assert (await cp.call("BootNotification", BOOT))["status"] == "Accepted"
            await cp.call("TransactionEvent", {
                "eventType": "Started", "timestamp": iso(now - timedelta(minutes=30)), "triggerReason": "Authorized",
                "seqNo": 0, "transactionInfo": {"transactionId": "TX-21"}, "evse": {"id": 1, "connectorId": 1}})

            answers: dict[str, dict[str, Any]] = {}
            for action, payload in reqs.items():
                # every message twice, as a charger retries after a lost answer; the priority message with its
                # first id (2.1 Part 4 §4.1.4 lets a retry reuse it), the others with a new one
                mid = uuid.uuid4().hex
                answers[action] = await cp.call(action, payload, mid)
                again = await cp.call(action, payload, mid if action == "NotifyPriorityCharging" else None)
                if action != "GetCertificateChainStatus":  # (its nextUpdate is the time of the answer)
                    assert again == answers[action]

            # answers: the neutral values where the CSMS has no policy (docstring of handlers_v21_only)
            assert answers["NotifySettlement"] == {}
            assert answers["PullDynamicScheduleUpdate"]["status"] == "Rejected"
            assert answers["VatNumberValidation"]["status"] == "Rejected"
            assert answers["VatNumberValidation"]["vatNumber"] == "NL123456789B01"
            assert answers["VatNumberValidation"]["evseId"] == 1
            status = answers["GetCertificateChainStatus"]["certificateStatus"]
            assert [(s["status"], s["source"], s["certificateHashData"]["serialNumber"]) for s in status] == [
                ("Failed", "OCSP", "01")]

            # a periodic event stream: open, SEND data (twice: a resend), close
            opened = await cp.call("OpenPeriodicEventStream", {"constantStreamData": {
                "id": 7, "variableMonitoringId": 3, "params": {"interval": 1, "values": 10}}})
            assert opened == {"status": "Accepted"}
            base = now + timedelta(minutes=1)
            data = {"id": 7, "pending": 0, "basetime": iso(base),
                    "data": [{"t": 0, "v": "230.1"}, {"t": 1.5, "v": "231"}, {"t": 3, "v": "n/a"}]}
            await cp.send("NotifyPeriodicEventStream", data)
            await cp.send("NotifyPeriodicEventStream", data)
            # The SENDs are unanswered: the next frame is the Heartbeat's answer (handled in order, so they
            # are stored by then).
            heartbeat = await cp.call("Heartbeat", {})
            assert "currentTime" in heartbeat
            assert await cp.call("ClosePeriodicEventStream", {"id": 7}) == {}

        # stored, each once
        async def count(table: str, where: str = "") -> int:
            return int(await db.fetchval(f"SELECT count(*) FROM {table} WHERE charge_point_id = 'CP21' {where}"))

        assert await count("settlements") == 1
        assert await count("der_events") == 3
        assert {r["kind"] for r in await db.fetch("SELECT kind FROM der_events")} == {"alarm", "start_stop", "report"}
        assert await count("battery_swaps") == 2
        assert await count("priority_charging") == 1
        assert await count("periodic_stream_samples") == 3
        assert await count("periodic_streams") == 1
        for action in ("PullDynamicScheduleUpdate", "GetCertificateChainStatus", "VatNumberValidation"):
            # recorded in the message log (per receipt; these requests carry nothing to key a retry on)
            assert await count("charger_messages", f"AND action = '{action}'") >= 1

        # readable through the API
        async with central.api() as api:
            base_path = "/api/v1/charge-points/CP21"
            settlements = (await api.get(f"{base_path}/settlements")).json()
            assert len(settlements) == 1
            s = settlements[0]
            assert (s["psp_ref"], s["status"], s["amount"], s["transaction_uid"]) == ("PSP-1", "Settled", 12.34,
                                                                                       "TX-21")
            assert s["transaction_started_at"] == iso(now - timedelta(minutes=30)).replace(".000", "")
            assert s["vat_company"]["city"] == "Arnhem"

            der = (await api.get(f"{base_path}/der-events")).json()
            assert len(der) == 3
            alarm = (await api.get(f"{base_path}/der-events", params={"kind": "alarm"})).json()
            assert [(a["control_type"], a["grid_event_fault"], a["alarm_ended"]) for a in alarm] == [
                ("HVMustTrip", "OverVoltage", False)]
            report = (await api.get(f"{base_path}/der-events", params={"kind": "report"})).json()
            assert report[0]["request_id"] == 42
            assert report[0]["controls"]["fixedPFInject"][0]["id"] == "FPF-1"
            start_stop = (await api.get(f"{base_path}/der-events", params={"kind": "start_stop"})).json()
            assert (start_stop[0]["control_id"], start_stop[0]["started"], start_stop[0]["superseded_ids"]) == (
                "FPF-1", True, ["FPF-0"])

            streams = (await api.get(f"{base_path}/periodic-streams")).json()
            assert [(x["stream_id"], x["variable_monitoring_id"], x["interval_s"], x["stored_values"])
                    for x in streams] == [(7, 3, 1, 3)]
            assert streams[0]["closed_at"] is not None
            assert (await api.get(f"{base_path}/periodic-streams", params={"open_only": True})).json() == []
            values = (await api.get(f"{base_path}/periodic-streams/7/values")).json()
            assert [(v["seq"], v["value"], v["raw_value"]) for v in values] == [
                (2, None, "n/a"), (1, 231.0, "231"), (0, 230.1, "230.1")]
            assert values[2]["time"] == iso(base).replace(".000", "")
            # pages: limit, then before = the last row's time
            first = (await api.get(f"{base_path}/periodic-streams/7/values", params={"limit": 2})).json()
            rest = (await api.get(f"{base_path}/periodic-streams/7/values",
                                  params={"limit": 2, "before": first[-1]["time"]})).json()
            assert [v["seq"] for v in first + rest] == [2, 1, 0]

            swaps = (await api.get(f"{base_path}/battery-swaps")).json()
            assert sorted((b["serial_number"], b["evse_id"], b["soc"], b["event_type"]) for b in swaps) == [
                ("B-1", 1, 20.5, "BatteryIn"), ("B-2", 2, 35.0, "BatteryIn")]
            priority = (await api.get(f"{base_path}/priority-charging")).json()
            assert [(p["transaction_uid"], p["activated"]) for p in priority] == [("TX-21", True)]

            assert (await api.get("/api/v1/charge-points/NOPE/settlements")).status_code == 404
            assert (await api.get(f"{base_path}/der-events", params={"limit": 1001})).status_code == 422


async def test_21_only_actions_on_a_201_connection_are_not_implemented(db_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    reqs = messages(now)
    reqs["OpenPeriodicEventStream"] = {"constantStreamData": {"id": 1, "variableMonitoringId": 1, "params": {}}}
    reqs["ClosePeriodicEventStream"] = {"id": 1}
    reqs["NotifyPeriodicEventStream"] = {"id": 1, "pending": 0, "basetime": iso(now), "data": [{"t": 0, "v": "1"}]}
    async with running_central(db_url) as central:
        await central.register("CP201X", evses=1)
        async with raw_charger(central.ws_base, "CP201X", "2.0.1") as cp:
            boot = await cp.call_frame("BootNotification", BOOT)
            assert (boot[0], boot[2]["status"]) == (3, "Accepted")
            for action, payload in reqs.items():
                # NotImplemented: "Requested Action is not known by receiver" (2.0.1 Part 4 §4.3 Table 8)
                answer = await cp.call_frame(action, payload)
                assert (answer[0], answer[2]) == (4, "NotImplemented"), (action, answer)
                assert answer[3] == f"{action} is not an OCPP 2.0.1 action (it is defined in OCPP 2.1)"
            # a 2.0.1 receiver answers message type 6 with MessageTypeNotSupported (2.0.1 Part 4 §4.4)
            await cp.ws.send(json.dumps([6, "send-1", "NotifyPeriodicEventStream", reqs["NotifyPeriodicEventStream"]]))
            answer = await cp.frame()
            assert (answer[0], answer[2]) == (4, "MessageTypeNotSupported"), answer
            # an action the CSMS sends: NotSupported ("recognized but not supported"), with a true description
            answer = await cp.call_frame("RequestStartTransaction", {
                "idToken": {"idToken": "X", "type": "Central"}, "remoteStartId": 1})
            assert (answer[0], answer[2]) == (4, "NotSupported")
            assert answer[3] == ("RequestStartTransaction is sent by the CSMS to a charging station, not by a "
                                 "charging station (OCPP 2.0.1)")
        async with raw_charger(central.ws_base, "CP201X", "2.1") as cp:
            assert (await cp.call("BootNotification", BOOT))["status"] == "Accepted"
            # a 2.1 action the CSMS sends (GetTariffs) is recognised but not a charger's: NotSupported
            answer = await cp.call_frame("GetTariffs", {"evseId": 1})
            assert (answer[0], answer[2]) == (4, "NotSupported")
            assert "sent by the CSMS" in answer[3]
