"""OCPP 2.1 operator commands (issue 14 item 2): every CSMS-initiated 2.1 action through
``POST …/ocpp/{Action}``, the tariff and DER-control shortcuts, and their refusal on 1.6/2.0.1.

The charger here speaks raw 2.1 frames over a real websocket and checks every CALL it receives
against the official 2.1 request schema with jsonschema (independently of the CSMS's own compiled
validators); the CSMS checks its answer against the 2.1 response schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import typing
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from csms.api.tariffs import DerControlType
from csms.ocpp import commands, handlers_v201
from csms.ocpp.validation import known_actions, load_schema
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth

# The messages 2.1 adds that the charging station sends (2.1 Part 2; issue 14 item 1): never commands.
CHARGER_SENT_NEW_IN_21 = frozenset({
    "BatterySwap", "ClosePeriodicEventStream", "GetCertificateChainStatus", "NotifyDERAlarm", "NotifyDERStartStop",
    "NotifyPeriodicEventStream", "NotifyPriorityCharging", "NotifySettlement", "OpenPeriodicEventStream",
    "PullDynamicScheduleUpdate", "ReportDERControl", "VatNumberValidation"})

TARIFF = {"tariffId": "T-1", "currency": "EUR", "energy": {"prices": [{"priceKwh": 0.35}]}}

# Every CSMS-initiated message 2.1 adds, with a valid request and a valid answer of the charger.
NEW_IN_21: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("SetDefaultTariff", {"evseId": 0, "tariff": TARIFF}, {"status": "Accepted"}),
    ("GetTariffs", {"evseId": 0}, {"status": "Accepted", "tariffAssignments": [
        {"tariffId": "T-1", "tariffKind": "DefaultTariff", "evseIds": [1, 2]}]}),
    ("ClearTariffs", {"tariffIds": ["T-1"]}, {"clearTariffsResult": [{"tariffId": "T-1", "status": "Accepted"}]}),
    ("ChangeTransactionTariff", {"transactionId": "tx-1", "tariff": TARIFF}, {"status": "TxNotFound"}),
    ("RequestBatterySwap", {"requestId": 1, "idToken": {"idToken": "TAG-1", "type": "ISO14443"}},
     {"status": "Accepted"}),
    ("SetDERControl", {"isDefault": True, "controlId": "pf-1", "controlType": "FixedPFAbsorb",
                       "fixedPFAbsorb": {"priority": 0, "displacement": 0.95, "excitation": True}},
     {"status": "Accepted", "supersededIds": ["pf-0"]}),
    ("GetDERControl", {"requestId": 7}, {"status": "Accepted"}),
    ("ClearDERControl", {"isDefault": True, "controlType": "FixedPFAbsorb"}, {"status": "NotFound"}),
    ("NotifyAllowedEnergyTransfer", {"transactionId": "tx-1", "allowedEnergyTransfer": ["AC_three_phase", "DC"]},
     {"status": "Accepted"}),
    ("NotifyWebPaymentStarted", {"evseId": 1, "timeout": 120}, {}),
    ("UsePriorityCharging", {"transactionId": "tx-1", "activate": True}, {"status": "Accepted"}),
    ("UpdateDynamicSchedule", {"chargingProfileId": 3, "scheduleUpdate": {"limit": 11000.0}},
     {"status": "Accepted"}),
    ("AFRRSignal", {"timestamp": "2026-01-01T00:00:00.000Z", "signal": -1}, {"status": "Accepted"}),
    ("AdjustPeriodicEventStream", {"id": 4, "params": {"interval": 10, "values": 5}}, {"status": "Rejected"}),
    ("GetPeriodicEventStream", {}, {"constantStreamData": [{"id": 4, "variableMonitoringId": 9,
                                                            "params": {"interval": 10}}]}),
]
# A few messages 2.1 keeps from 2.0.1: validated against the 2.1 schemas on a 2.1 connection.
KEPT_FROM_201: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("Reset", {"type": "OnIdle"}, {"status": "Accepted"}),
    ("GetVariables", {"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                           "variable": {"name": "HeartbeatInterval"}}]},
     {"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "300",
                             "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]}),
    ("ClearCache", {}, {"status": "Accepted"}),
    ("CostUpdated", {"totalCost": 1.25, "transactionId": "tx-1"}, {}),
]
ANSWERS = {action: answer for action, _, answer in NEW_IN_21 + KEPT_FROM_201}


# --------------------------------------------------------------------------- the action tables (pure)


def test_21_command_table_is_its_own_and_partitions_the_schemas() -> None:
    v21 = commands.CSMS_ACTIONS["2.1"]
    assert commands.CSMS_ACTIONS["2.0.1"] <= v21 <= known_actions("2.1")
    assert v21 - commands.CSMS_ACTIONS["2.0.1"] == commands.CSMS_ACTIONS_NEW_IN_21
    assert {a for a, _, _ in NEW_IN_21} == commands.CSMS_ACTIONS_NEW_IN_21
    # What 2.1 adds is either sent by the CSMS or by the charger, never both, and nothing is left out.
    added = known_actions("2.1") - known_actions("2.0.1")
    assert added == commands.CSMS_ACTIONS_NEW_IN_21 | CHARGER_SENT_NEW_IN_21
    assert not commands.CSMS_ACTIONS_NEW_IN_21 & CHARGER_SENT_NEW_IN_21
    charger_sent = set(handlers_v201.HANDLERS) | CHARGER_SENT_NEW_IN_21
    assert v21 | charger_sent == known_actions("2.1")
    assert v21 & charger_sent == {"DataTransfer"}  # both directions (2.1 Part 2 block P)
    for action in v21:  # every command has its 2.1 request and response schema
        assert load_schema("2.1", action, False)["$id"].endswith(f"{action}Request")
        assert load_schema("2.1", action, True)["$id"].endswith(f"{action}Response")


@pytest.mark.parametrize(("version", "action", "reason"), [
    ("2.0.1", "GetTariffs", "GetTariffs is not a command the CSMS sends in OCPP 2.0.1: it is an OCPP 2.1 command, "
                            "and this charger speaks OCPP 2.0.1"),
    ("1.6", "SetDERControl", "it is an OCPP 2.1 command, and this charger speaks OCPP 1.6"),
    ("1.6", "GetVariables", "it is an OCPP 2.0.1 and 2.1 command, and this charger speaks OCPP 1.6"),
    ("2.1", "NotifySettlement", "NotifySettlement is not a command the CSMS sends in OCPP 2.1: the charging station "
                                "sends it"),
    ("2.1", "GetConfiguration", "it is an OCPP 1.6 command, and this charger speaks OCPP 2.1"),
    ("2.1", "Teleport", "OCPP 2.1 has no such message"),
])
def test_refusals_say_why(version: str, action: str, reason: str) -> None:
    with pytest.raises(commands.CommandRefused) as refused:
        commands.check_command(version=version, registration="Accepted", action=action, payload={})
    assert reason in str(refused.value)


@pytest.mark.parametrize(("action", "payload", "_answer"), NEW_IN_21)
def test_21_additions_wait_for_accepted(action: str, payload: dict[str, Any], _answer: dict[str, Any]) -> None:
    commands.check_command(version="2.1", registration="Accepted", action=action, payload=payload)
    # Not configuration nor a device-model report: refused while Pending (B02.FR.01/05; R30) and after Rejected.
    with pytest.raises(commands.CommandRefused, match="only configuration and reports"):
        commands.check_command(version="2.1", registration="Pending", action=action, payload=payload)
    with pytest.raises(commands.CommandRefused, match="rejected"):
        commands.check_command(version="2.1", registration="Rejected", action=action, payload=payload)


def test_builders_make_valid_21_payloads_and_refuse_other_versions() -> None:
    tariff = commands.Tariff(tariff_id="T-2", currency="EUR", energy_price_kwh=0.3, charging_time_price_min=0.02,
                             idle_time_price_min=0.1, fixed_fee=1.0, tax_rate_pct=19.0, description="Standard",
                             language="en", valid_from="2026-01-01T00:00:00Z")
    curve = {"priority": 0, "yUnit": "PctMaxW", "curveData": [{"x": 50.0, "y": 100.0}, {"x": 50.2, "y": 0.0}]}
    built = [commands.set_default_tariff("2.1", evse_id=0, tariff=tariff),
             commands.get_tariffs("2.1", evse_id=1),
             commands.clear_tariffs("2.1"), commands.clear_tariffs("2.1", tariff_ids=["T-2"], evse_id=1),
             commands.change_transaction_tariff("2.1", transaction_id="tx-9", tariff=tariff),
             commands.set_der_control("2.1", control_id="fw-1", control_type="FreqWatt", is_default=False,
                                      setting=curve),
             commands.get_der_control("2.1", request_id=3, is_default=True, control_type="FreqWatt"),
             commands.clear_der_control("2.1", is_default=False, control_id="fw-1")]
    for action, payload in built:
        commands.check_command(version="2.1", registration="Accepted", action=action, payload=payload)
        _official_validator(action, response=False).validate(payload)
    assert built[0][1]["tariff"]["energy"] == {"prices": [{"priceKwh": 0.3}], "taxRates": [{"type": "VAT",
                                                                                            "tax": 19.0}]}
    assert built[5][1]["curve"] == curve
    with pytest.raises(commands.CommandRefused, match="a tariff needs at least one price"):
        commands.Tariff(tariff_id="T-3", currency="EUR").ocpp()
    for version in ("1.6", "2.0.1"):
        with pytest.raises(commands.CommandRefused,
                           match=re.escape(f"tariffs need OCPP 2.1; this charger speaks OCPP {version}")):
            commands.get_tariffs(version, evse_id=0)
        with pytest.raises(commands.CommandRefused, match=re.escape("DER controls need OCPP 2.1")):
            commands.clear_der_control(version, is_default=True)


def test_der_control_types_match_the_21_schema() -> None:
    schema = load_schema("2.1", "SetDERControl", False)
    enum = set(schema["definitions"]["DERControlEnumType"]["enum"])
    assert set(typing.get_args(DerControlType)) == enum == set(commands.DER_SETTING_FIELD)
    assert set(commands.DER_SETTING_FIELD.values()) <= set(schema["properties"])


# --------------------------------------------------------------------------- a raw 2.1 charger


def _official_validator(action: str, *, response: bool) -> jsonschema.Draft6Validator:
    name = f"{action}Response.json" if response else f"{action}Request.json"
    text = (resources.files("ocpp") / "v21" / "schemas" / name).read_text(encoding="utf-8-sig")
    return jsonschema.Draft6Validator(json.loads(text), format_checker=jsonschema.FormatChecker())


class RawCharger:
    """Answers the CSMS's CALLs from ``answers``; records each CALL after checking it against the
    official request schema of its version (a schema failure is recorded, never answered)."""

    def __init__(self, ws: ClientConnection, version: str, answers: dict[str, dict[str, Any]]) -> None:
        self.ws = ws
        self.version = version
        self.answers = answers
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.invalid: list[str] = []

    async def run(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame[0] != 2:
                    continue
                _, message_id, action, payload = frame
                if self.version == "2.1":
                    errors = list(_official_validator(action, response=False).iter_errors(payload))
                    if errors:
                        self.invalid.append(f"{action}: {errors[0].message}")
                        continue
                self.received.append((action, payload))
                if action in self.answers:
                    await self.ws.send(json.dumps([3, message_id, self.answers[action]]))
                else:
                    await self.ws.send(json.dumps([4, message_id, "NotImplemented", "no handler", {}]))


BOOT = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}


@contextlib.asynccontextmanager
async def raw_charger(central: RunningCentral, cp_id: str, version: str,
                      answers: dict[str, dict[str, Any]] | None = None,
                      boot_status: str = "Accepted") -> AsyncIterator[RawCharger]:
    await central.register(cp_id, admission="accept" if boot_status == "Accepted" else "pending")
    ws = await websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, PASSWORD), open_timeout=10)
    try:
        assert ws.subprotocol == f"ocpp{version}"
        boot = BOOT if version != "1.6" else {"chargePointVendor": "V", "chargePointModel": "M"}
        await ws.send(json.dumps([2, "boot-1", "BootNotification", boot]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer[0] == 3, answer
        assert answer[2]["status"] == boot_status, answer
        charger = RawCharger(ws, version, dict(ANSWERS if answers is None else answers))
        task = asyncio.create_task(charger.run())
        try:
            yield charger
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await ws.close()



@pytest.mark.integration
async def test_every_21_command_reaches_a_21_charger_and_its_validated_answer_comes_back(db_url: str) -> None:
    async with running_central(db_url) as central, raw_charger(central, "CMD21", "2.1") as cp, \
            central.api() as api:
        for action, payload, expected in NEW_IN_21 + KEPT_FROM_201:
            reply = await api.post(f"/api/v1/charge-points/CMD21/ocpp/{action}", json=payload)
            assert reply.status_code == 200, (action, reply.text)
            body = reply.json()
            assert (body["action"], body["ocpp_version"], body["response"]) == (action, "2.1", expected)
            _official_validator(action, response=True).validate(body["response"])
        assert cp.invalid == []
        assert cp.received == [(action, payload) for action, payload, _ in NEW_IN_21 + KEPT_FROM_201]

        # Invalid payloads (2.1 schema) never reach the charger: 400 naming the field.
        sent = len(cp.received)
        for action, payload, field in (("SetDefaultTariff", {"evseId": 0}, "tariff"),
                                       ("SetDERControl", {"isDefault": True, "controlId": "x",
                                                          "controlType": "Sideways"}, "controlType"),
                                       ("AFRRSignal", {"timestamp": "yesterday", "signal": 1}, "timestamp"),
                                       ("GetTariffs", {"evseId": 0, "extra": 1}, "payload")):
            bad = await api.post(f"/api/v1/charge-points/CMD21/ocpp/{action}", json=payload)
            assert bad.status_code == 400, (action, bad.text)
            assert f"invalid {action} payload for OCPP 2.1" in bad.json()["detail"]
            assert field in bad.json()["detail"]
        # 2.1 messages the charger sends are no commands.
        wrong_way = await api.post("/api/v1/charge-points/CMD21/ocpp/NotifySettlement", json={})
        assert wrong_way.status_code == 400
        assert "the charging station sends it" in wrong_way.json()["detail"]
        assert len(cp.received) == sent

        # The charger's answer is checked against the 2.1 response schema: an invalid one is a 502.
        cp.answers["GetTariffs"] = {"status": "Maybe"}
        invalid = await api.post("/api/v1/charge-points/CMD21/ocpp/GetTariffs", json={"evseId": 0})
        assert invalid.status_code == 502
        assert invalid.json()["detail"]["error"] == "InvalidResponse"
        assert "status" in invalid.json()["detail"]["description"]
        del cp.answers["UsePriorityCharging"]  # a CALLERROR comes back as it is
        refused = await api.post("/api/v1/charge-points/CMD21/ocpp/UsePriorityCharging",
                                 json={"transactionId": "tx-1", "activate": False})
        assert refused.status_code == 502
        assert refused.json()["detail"]["error"] == "NotImplemented"


@pytest.mark.integration
async def test_tariff_and_der_shortcuts_end_to_end(db_url: str) -> None:
    async with running_central(db_url) as central, raw_charger(central, "SHORT21", "2.1") as cp, \
            central.api() as api:
        base = "/api/v1/charge-points/SHORT21"
        tariff = {"tariff_id": "T-7", "currency": "EUR", "energy_price_kwh": 0.39, "idle_time_price_min": 0.1,
                  "tax_rate_pct": 21, "description": "Standaard", "language": "nl",
                  "valid_from": "2026-03-01T00:00:00+01:00"}
        ocpp_tariff = {"tariffId": "T-7", "currency": "EUR",
                       "energy": {"prices": [{"priceKwh": 0.39}], "taxRates": [{"type": "VAT", "tax": 21.0}]},
                       "idleTime": {"prices": [{"priceMinute": 0.1}], "taxRates": [{"type": "VAT", "tax": 21.0}]},
                       "description": [{"format": "UTF8", "content": "Standaard", "language": "nl"}],
                       "validFrom": "2026-02-28T23:00:00Z"}
        calls: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = [
            ("POST", "/tariffs/default", {"json": {"evse_id": 1, "tariff": tariff}},
             "SetDefaultTariff", {"evseId": 1, "tariff": ocpp_tariff}),
            ("GET", "/tariffs", {"params": {"evse_id": 1}}, "GetTariffs", {"evseId": 1}),
            ("DELETE", "/tariffs", {"params": [("tariff_id", "T-7"), ("tariff_id", "T-8"), ("evse_id", 1)]},
             "ClearTariffs", {"tariffIds": ["T-7", "T-8"], "evseId": 1}),
            ("DELETE", "/tariffs", {}, "ClearTariffs", {}),
            ("POST", "/transactions/tx-42/tariff", {"json": tariff},
             "ChangeTransactionTariff", {"transactionId": "tx-42", "tariff": ocpp_tariff}),
            ("POST", "/der-controls", {"json": {"control_id": "var-1", "control_type": "FixedVar",
                                                "setting": {"priority": 1, "setpoint": -20.0, "unit": "PctMaxVar"}}},
             "SetDERControl", {"isDefault": False, "controlId": "var-1", "controlType": "FixedVar",
                               "fixedVar": {"priority": 1, "setpoint": -20.0, "unit": "PctMaxVar"}}),
            ("DELETE", "/der-controls", {"params": {"is_default": "false", "control_id": "var-1"}},
             "ClearDERControl", {"isDefault": False, "controlId": "var-1"}),
        ]
        for method, path, kwargs, action, payload in calls:
            reply = await api.request(method, base + path, **kwargs)
            assert reply.status_code == 200, (path, reply.text)
            assert reply.json()["action"] == action
            assert reply.json()["response"] == ANSWERS[action]
            assert cp.received[-1] == (action, payload)
        # GetDERControl: the request id the ReportDERControl messages will carry is returned.
        reply = await api.get(base + "/der-controls", params={"control_type": "FixedVar", "is_default": "true"})
        assert reply.status_code == 200, reply.text
        request_id = reply.json()["request_id"]
        assert cp.received[-1] == ("GetDERControl", {"requestId": request_id, "isDefault": True,
                                                     "controlType": "FixedVar"})
        assert cp.invalid == []
        # Typed input is checked before anything is sent; a setting that does not fit its control type
        # is refused by the 2.1 schema (400) and never reaches the charger.
        sent = len(cp.received)
        for path, body in (("/tariffs/default", {"tariff": {**tariff, "currency": "euro"}}),
                           ("/tariffs/default", {"tariff": {**tariff, "energy_price_kwh": -1}}),
                           ("/der-controls", {"control_id": "x", "control_type": "Sideways", "setting": {}})):
            assert (await api.post(base + path, json=body)).status_code == 422, body
        no_price = await api.post(base + "/tariffs/default", json={"tariff": {"tariff_id": "T", "currency": "EUR"}})
        assert no_price.status_code == 400
        assert "at least one price" in no_price.json()["detail"]
        misfit = await api.post(base + "/der-controls", json={"control_id": "x", "control_type": "FixedVar",
                                                              "setting": {"priority": 1}})
        assert misfit.status_code == 400
        assert "invalid SetDERControl payload for OCPP 2.1" in misfit.json()["detail"]
        assert len(cp.received) == sent


@pytest.mark.integration
async def test_21_commands_are_refused_on_16_and_201_chargers_and_while_pending(db_url: str) -> None:
    async with running_central(db_url) as central, central.api() as api:
        async with raw_charger(central, "OLD201", "2.0.1", answers={}) as cp201, \
                raw_charger(central, "OLD16", "1.6", answers={}) as cp16:
            for action, payload, _ in NEW_IN_21:
                refused = await api.post(f"/api/v1/charge-points/OLD201/ocpp/{action}", json=payload)
                assert refused.status_code == 400, (action, refused.text)
                assert refused.json()["detail"] == (f"{action} is not a command the CSMS sends in OCPP 2.0.1: it is "
                                                    "an OCPP 2.1 command, and this charger speaks OCPP 2.0.1")
            for cp_id, version in (("OLD201", "2.0.1"), ("OLD16", "1.6")):
                base = f"/api/v1/charge-points/{cp_id}"
                for method, path, kwargs, what in (
                        ("POST", "/tariffs/default", {"json": {"tariff": {"tariff_id": "T", "currency": "EUR",
                                                                          "fixed_fee": 1}}}, "tariffs"),
                        ("GET", "/tariffs", {}, "tariffs"),
                        ("DELETE", "/tariffs", {}, "tariffs"),
                        ("POST", "/transactions/7/tariff", {"json": {"tariff_id": "T", "currency": "EUR",
                                                                     "fixed_fee": 1}}, "tariffs"),
                        ("POST", "/der-controls", {"json": {"control_id": "x", "control_type": "FixedVar",
                                                            "setting": {}}}, "DER controls"),
                        ("GET", "/der-controls", {}, "DER controls"),
                        ("DELETE", "/der-controls", {"params": {"is_default": "true"}}, "DER controls")):
                    refused = await api.request(method, base + path, **kwargs)
                    assert refused.status_code == 400, (cp_id, path, refused.text)
                    assert refused.json()["detail"] == f"{what} need OCPP 2.1; this charger speaks OCPP {version}"
            assert cp201.received == []
            assert cp16.received == []
        # A 2.1 charger held Pending gets configuration and reports, not tariffs (B02.FR.01/05; R30).
        async with raw_charger(central, "WAIT21", "2.1", boot_status="Pending") as cp:
            allowed = await api.post("/api/v1/charge-points/WAIT21/ocpp/GetVariables",
                                     json=KEPT_FROM_201[1][1])
            assert allowed.status_code == 200, allowed.text
            pending_calls: list[tuple[str, str, dict[str, Any]]] = [
                ("GET", "/tariffs", {}), ("DELETE", "/der-controls", {"params": {"is_default": "true"}})]
            for method, path, kwargs in pending_calls:
                refused = await api.request(method, "/api/v1/charge-points/WAIT21" + path, **kwargs)
                assert refused.status_code == 400
                assert "the charger is Pending: only configuration and reports may be sent" in refused.json()["detail"]
            assert [a for a, _ in cp.received] == ["GetVariables"]
