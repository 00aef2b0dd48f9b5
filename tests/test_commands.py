"""Operator commands through the HTTP API to chargers that answer them (the ``ocpp`` package's ChargePoint)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from tests.central import PASSWORD, running_central
from tests.chargers import connect_charger

pytestmark = pytest.mark.integration


class Charger16(ChargePoint16):  # type: ignore[misc]
    """Answers every 1.6 command an operator can send."""

    received: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = []

    def _got(self, action: str) -> None:
        self.received.append(action)

    @on("RemoteStartTransaction")
    def remote_start(self, **kw: Any) -> Any:
        self._got("RemoteStartTransaction")
        return result16.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def remote_stop(self, **kw: Any) -> Any:
        self._got("RemoteStopTransaction")
        return result16.RemoteStopTransaction(status="Accepted")

    @on("Reset")
    def reset(self, **kw: Any) -> Any:
        self._got("Reset")
        return result16.Reset(status="Accepted")

    @on("ChangeAvailability")
    def change_availability(self, **kw: Any) -> Any:
        self._got("ChangeAvailability")
        return result16.ChangeAvailability(status="Scheduled")

    @on("GetConfiguration")
    def get_configuration(self, **kw: Any) -> Any:
        self._got("GetConfiguration")
        return result16.GetConfiguration(configuration_key=[{"key": "HeartbeatInterval", "readonly": False,
                                                             "value": "300"}])

    @on("ChangeConfiguration")
    def change_configuration(self, **kw: Any) -> Any:
        self._got("ChangeConfiguration")
        return result16.ChangeConfiguration(status="Accepted")

    @on("TriggerMessage")
    def trigger_message(self, **kw: Any) -> Any:
        self._got("TriggerMessage")
        return result16.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def unlock(self, **kw: Any) -> Any:
        self._got("UnlockConnector")
        return result16.UnlockConnector(status="Unlocked")

    @on("ClearCache")
    def clear_cache(self, **kw: Any) -> Any:
        self._got("ClearCache")
        return result16.ClearCache(status="Accepted")

    @on("SetChargingProfile")
    def set_profile(self, **kw: Any) -> Any:
        self._got("SetChargingProfile")
        return result16.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def clear_profile(self, **kw: Any) -> Any:
        self._got("ClearChargingProfile")
        return result16.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def composite(self, **kw: Any) -> Any:
        self._got("GetCompositeSchedule")
        return result16.GetCompositeSchedule(status="Accepted", connector_id=1)

    @on("UpdateFirmware")
    def update_firmware(self, **kw: Any) -> Any:
        self._got("UpdateFirmware")
        return result16.UpdateFirmware()

    @on("GetDiagnostics")
    def diagnostics(self, **kw: Any) -> Any:
        self._got("GetDiagnostics")
        return result16.GetDiagnostics(file_name="diag.zip")

    @on("GetLog")
    def get_log(self, **kw: Any) -> Any:
        self._got("GetLog")
        return result16.GetLog(status="Accepted", filename="log.zip")

    @on("DataTransfer")
    def data_transfer(self, **kw: Any) -> Any:
        self._got("DataTransfer")
        return result16.DataTransfer(status="Accepted", data="pong")


PROFILE16 = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
             "chargingProfileKind": "Absolute",
             "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                                         "limit": 16.0}]}}

COMMANDS16: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG"}, {"status": "Accepted"}),
    ("RemoteStopTransaction", {"transactionId": 7}, {"status": "Accepted"}),
    ("Reset", {"type": "Soft"}, {"status": "Accepted"}),
    ("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}, {"status": "Scheduled"}),
    ("GetConfiguration", {"key": ["HeartbeatInterval"]},
     {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]}),
    ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "120"}, {"status": "Accepted"}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}, {"status": "Accepted"}),
    ("UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"}),
    ("ClearCache", {}, {"status": "Accepted"}),
    ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": PROFILE16}, {"status": "Accepted"}),
    ("ClearChargingProfile", {"id": 1}, {"status": "Accepted"}),
    ("GetCompositeSchedule", {"connectorId": 1, "duration": 3600}, {"status": "Accepted", "connectorId": 1}),
    ("UpdateFirmware", {"location": "https://fw.example/fw.bin", "retrieveDate": "2026-01-01T00:00:00Z"}, {}),
    ("GetDiagnostics", {"location": "ftp://diag.example/"}, {"fileName": "diag.zip"}),
    ("GetLog", {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "https://logs.example/"}},
     {"status": "Accepted", "filename": "log.zip"}),
    ("DataTransfer", {"vendorId": "com.example", "messageId": "ping", "data": "ping"},
     {"status": "Accepted", "data": "pong"}),
]


async def test_every_16_command_reaches_the_charger_and_its_answer_comes_back(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("CMD16")
        async with connect_charger(central.ws_base, "CMD16", "1.6", password=PASSWORD, cls=Charger16) as cp, \
                central.api() as api:
            await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
            for action, payload, expected in COMMANDS16:
                reply = await api.post(f"/api/v1/charge-points/CMD16/ocpp/{action}", json=payload)
                assert reply.status_code == 200, (action, reply.text)
                assert reply.json()["response"] == expected, action
            assert cp.received == [c[0] for c in COMMANDS16]
            # The version-neutral endpoints map onto the 1.6 messages.
            for path, body in (("remote-start", {"evse_id": 1, "id_token": "TAG"}),
                               ("remote-stop", {"transaction_id": "7"}), ("reset", {"hard": True}),
                               ("change-availability", {"evse_id": 1, "operative": True})):
                reply = await api.post(f"/api/v1/charge-points/CMD16/{path}", json=body)
                assert reply.status_code == 200, (path, reply.text)
            assert cp.received[-4:] == ["RemoteStartTransaction", "RemoteStopTransaction", "Reset",
                                        "ChangeAvailability"]
            # Invalid payloads never reach the charger.
            bad = await api.post("/api/v1/charge-points/CMD16/ocpp/Reset", json={"type": "Gentle"})
            assert bad.status_code == 400
            wrong_way = await api.post("/api/v1/charge-points/CMD16/ocpp/BootNotification", json={})
            assert wrong_way.status_code == 400


class Charger201(ChargePoint201):  # type: ignore[misc]
    received: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = []

    @on("RequestStartTransaction")
    def request_start(self, **kw: Any) -> Any:
        self.received.append("RequestStartTransaction")
        return result201.RequestStartTransaction(status="Accepted", transaction_id="tx-1")

    @on("RequestStopTransaction")
    def request_stop(self, **kw: Any) -> Any:
        self.received.append("RequestStopTransaction")
        return result201.RequestStopTransaction(status="Accepted")

    @on("Reset")
    def reset(self, **kw: Any) -> Any:
        self.received.append("Reset")
        return result201.Reset(status="Accepted")

    @on("ChangeAvailability")
    def change_availability(self, **kw: Any) -> Any:
        self.received.append("ChangeAvailability")
        return result201.ChangeAvailability(status="Accepted")

    @on("GetVariables")
    def get_variables(self, **kw: Any) -> Any:
        self.received.append("GetVariables")
        return result201.GetVariables(get_variable_result=[{
            "attribute_status": "Accepted", "attribute_value": "300",
            "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}])

    @on("SetVariables")
    def set_variables(self, **kw: Any) -> Any:
        self.received.append("SetVariables")
        return result201.SetVariables(set_variable_result=[{
            "attribute_status": "Accepted", "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "HeartbeatInterval"}}])

    @on("GetBaseReport")
    def get_base_report(self, **kw: Any) -> Any:
        self.received.append("GetBaseReport")
        return result201.GetBaseReport(status="Accepted")

    @on("TriggerMessage")
    def trigger(self, **kw: Any) -> Any:
        self.received.append("TriggerMessage")
        return result201.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def unlock(self, **kw: Any) -> Any:
        self.received.append("UnlockConnector")
        return result201.UnlockConnector(status="Unlocked")

    @on("ClearCache")
    def clear_cache(self, **kw: Any) -> Any:
        self.received.append("ClearCache")
        return result201.ClearCache(status="Accepted")

    @on("SetChargingProfile")
    def set_profile(self, **kw: Any) -> Any:
        self.received.append("SetChargingProfile")
        return result201.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def clear_profile(self, **kw: Any) -> Any:
        self.received.append("ClearChargingProfile")
        return result201.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def composite(self, **kw: Any) -> Any:
        self.received.append("GetCompositeSchedule")
        return result201.GetCompositeSchedule(status="Accepted")

    @on("UpdateFirmware")
    def update_firmware(self, **kw: Any) -> Any:
        self.received.append("UpdateFirmware")
        return result201.UpdateFirmware(status="Accepted")

    @on("GetLog")
    def get_log(self, **kw: Any) -> Any:
        self.received.append("GetLog")
        return result201.GetLog(status="Accepted", filename="log.zip")

    @on("DataTransfer")
    def data_transfer(self, **kw: Any) -> Any:
        self.received.append("DataTransfer")
        return result201.DataTransfer(status="Accepted", data={"pong": True})


async def _dropped_late_answers(api: httpx.AsyncClient, *, at_least: float, timeout_s: float = 30.0) -> float:
    """Wait (bounded) until the central system has dropped ``at_least`` unsolicited answers: on a busy
    machine a late answer can come later than any fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = 0.0
        for line in (await api.get("/metrics")).text.splitlines():
            if line.startswith("csms_ocpp_unsolicited_responses_total "):
                count = float(line.split()[1])
        if count >= at_least or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.1)


class SlowCharger(ChargePoint16):  # type: ignore[misc]
    @on("ClearCache")
    async def clear_cache(self, **kw: Any) -> Any:
        await asyncio.sleep(2)  # longer than the CSMS's call timeout in the test
        return result16.ClearCache(status="Accepted")

    @on("Reset")
    def reset(self, **kw: Any) -> Any:
        return result16.Reset(status="Rejected")


PROFILE201 = {"id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
              "chargingProfileKind": "Absolute",
              "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}]}

COMMANDS201: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("RequestStartTransaction", {"idToken": {"idToken": "TAG", "type": "Central"}, "remoteStartId": 1,
                                 "evseId": 1}, {"status": "Accepted", "transactionId": "tx-1"}),
    ("RequestStopTransaction", {"transactionId": "tx-1"}, {"status": "Accepted"}),
    ("Reset", {"type": "OnIdle"}, {"status": "Accepted"}),
    ("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}}, {"status": "Accepted"}),
    ("GetVariables", {"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                           "variable": {"name": "HeartbeatInterval"}}]},
     {"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "300",
                             "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
    ("SetVariables", {"setVariableData": [{"attributeValue": "120", "component": {"name": "OCPPCommCtrlr"},
                                           "variable": {"name": "HeartbeatInterval"}}]},
     {"setVariableResult": [{"attributeStatus": "Accepted", "component": {"name": "OCPPCommCtrlr"},
                             "variable": {"name": "HeartbeatInterval"}}]}),
    ("GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"}, {"status": "Accepted"}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
     {"status": "Accepted"}),
    ("UnlockConnector", {"evseId": 1, "connectorId": 1}, {"status": "Unlocked"}),
    ("ClearCache", {}, {"status": "Accepted"}),
    ("SetChargingProfile", {"evseId": 1, "chargingProfile": PROFILE201}, {"status": "Accepted"}),
    ("ClearChargingProfile", {"chargingProfileId": 1}, {"status": "Accepted"}),
    ("GetCompositeSchedule", {"duration": 3600, "evseId": 1}, {"status": "Accepted"}),
    ("UpdateFirmware", {"requestId": 1, "firmware": {"location": "https://fw.example/fw.bin",
                                                     "retrieveDateTime": "2026-01-01T00:00:00Z"}},
     {"status": "Accepted"}),
    ("GetLog", {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "https://logs.example/"}},
     {"status": "Accepted", "filename": "log.zip"}),
    ("DataTransfer", {"vendorId": "com.example", "messageId": "ping"}, {"status": "Accepted",
                                                                        "data": {"pong": True}}),
]


async def test_every_201_command_reaches_the_charger_and_its_answer_comes_back(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("CMD201")
        async with connect_charger(central.ws_base, "CMD201", "2.0.1", password=PASSWORD,
                                   cls=Charger201) as cp, central.api() as api:
            await cp.call(call201.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                                                   reason="PowerUp"))
            for action, payload, expected in COMMANDS201:
                reply = await api.post(f"/api/v1/charge-points/CMD201/ocpp/{action}", json=payload)
                assert reply.status_code == 200, (action, reply.text)
                assert reply.json()["response"] == expected, action
            assert cp.received == [c[0] for c in COMMANDS201]
            reply = await api.post("/api/v1/charge-points/CMD201/remote-start", json={"evse_id": 1, "id_token": "T"})
            assert reply.json()["action"] == "RequestStartTransaction"
            state = await api.get("/api/v1/charge-points/CMD201/state")
            assert state.json()["connection"]["ocpp_version"] == "2.0.1"


async def test_commands_fail_fast_offline_time_out_and_respect_pending(db_url: str) -> None:
    async with running_central(db_url, call_timeout_s=1.0) as central:
        await central.register("OFFLINE")
        await central.register("SILENT")
        await central.register("WAITING", admission="pending")
        async with central.api() as api:
            offline = await api.post("/api/v1/charge-points/OFFLINE/reset", json={"hard": False})
            assert offline.status_code == 409
            assert "not connected" in offline.json()["detail"]
            unauthenticated = await api.post("/api/v1/charge-points/OFFLINE/reset", json={},
                                             headers={"Authorization": "Bearer nope-nope-nope-nope"})
            assert unauthenticated.status_code == 401
            # A charger that never answers: the command times out, the next one still works.
            async with connect_charger(central.ws_base, "SILENT", "1.6", password=PASSWORD,
                                       cls=SlowCharger) as cp:
                await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
                timed_out = await api.post("/api/v1/charge-points/SILENT/ocpp/ClearCache", json={})
                assert timed_out.status_code == 504
                # The late answer arrives and is dropped (R16) before the next command is sent.
                assert await _dropped_late_answers(api, at_least=1) >= 1
                fast = await api.post("/api/v1/charge-points/SILENT/ocpp/Reset", json={"type": "Soft"})
                assert fast.status_code == 200
                assert fast.json()["response"] == {"status": "Rejected"}
                # The ocpp package answers an action it has no handler for with a CALLERROR: 502.
                refused = await api.post("/api/v1/charge-points/SILENT/ocpp/UnlockConnector",
                                         json={"connectorId": 1})
                assert refused.status_code == 502
                assert refused.json()["detail"]["error"] in ("NotImplemented", "NotSupported")
            # Pending: configuration may be read, but no remote start (B02.FR.01/05).
            async with connect_charger(central.ws_base, "WAITING", "1.6", password=PASSWORD,
                                       cls=Charger16) as cp:
                boot = await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
                assert boot.status == "Pending"
                # Before Accepted, the charger's own messages are refused with SecurityError (R33).
                with pytest.raises(Exception, match="SecurityError"):
                    await cp.call(call16.Heartbeat(), suppress=False)
                allowed = await api.post("/api/v1/charge-points/WAITING/ocpp/GetConfiguration", json={})
                assert allowed.status_code == 200
                refused_start = await api.post("/api/v1/charge-points/WAITING/remote-start",
                                               json={"evse_id": 1, "id_token": "T"})
                assert refused_start.status_code == 400
                await asyncio.sleep(0)
