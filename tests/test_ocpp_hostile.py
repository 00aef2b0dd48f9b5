"""Hostile frames over a real socket: each gets the spec's answer, and every connection stays up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth

pytestmark = pytest.mark.integration

BOOT16 = [2, "boot-1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
BOOT201 = [2, "boot-1", "BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"},
                                             "reason": "PowerUp"}]


@pytest.fixture
async def central(db_url: str) -> AsyncIterator[RunningCentral]:
    async with running_central(db_url) as c:
        for cp in ("H16", "H201", "BYSTANDER", "H21"):
            await c.register(cp)
        yield c


async def _open(central: RunningCentral, cp: str, version: str) -> ClientConnection:
    ws = await websockets.connect(f"{central.ws_base}/{cp}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp, PASSWORD), max_size=2**20)
    boot = BOOT16 if version == "1.6" else BOOT201
    await ws.send(json.dumps(boot))
    answer = json.loads(await ws.recv())
    assert answer[0] == 3
    assert answer[2]["status"] == "Accepted"
    return ws


async def _answer(ws: ClientConnection, frame: str | bytes, wait_s: float = 5) -> list[Any]:
    await ws.send(frame)
    return list(json.loads(await asyncio.wait_for(ws.recv(), wait_s)))


async def _still_alive(ws: ClientConnection) -> None:
    reply = await _answer(ws, json.dumps([2, "alive", "Heartbeat", {}]))
    assert reply[:2] == [3, "alive"]
    assert reply[2]["currentTime"].endswith("Z")


CASES_201: list[tuple[str, str | bytes, str, str]] = [
    # (name, frame, expected message id, expected error code)
    ("invalid json", '[2, "a1", "Heartbeat", {', "a1", "RpcFrameworkError"),
    ("garbage", "}{ not json", "-1", "RpcFrameworkError"),
    ("not an array", '{"a": 1}', "-1", "RpcFrameworkError"),
    ("empty array", "[]", "-1", "RpcFrameworkError"),
    ("type as string", '["2", "a2", "Heartbeat", {}]', "a2", "RpcFrameworkError"),
    ("unknown type", '[7, "a3", "Heartbeat", {}]', "a3", "MessageTypeNotSupported"),
    ("send on 2.0.1", '[6, "a4", "Heartbeat", {}]', "a4", "MessageTypeNotSupported"),
    ("three elements", '[2, "a5", "Heartbeat"]', "a5", "RpcFrameworkError"),
    ("unhashable action", '[2, "a6", {"a": 1}, {}]', "a6", "RpcFrameworkError"),
    ("deep nesting", "[" * 100_000, "-1", "RpcFrameworkError"),
    ("wrong types", '[2, "a7", "StatusNotification", {"timestamp": 5, "connectorStatus": "Available", '
                    '"evseId": "one", "connectorId": 1}]', "a7", "TypeConstraintViolation"),
    ("missing field", '[2, "a7b", "StatusNotification", {"connectorStatus": "Available", "evseId": 1, '
                      '"connectorId": 1}]', "a7b", "OccurrenceConstraintViolation"),
    ("wrong type only", '[2, "a8", "Heartbeat", {"customData": 5}]', "a8", "TypeConstraintViolation"),
    ("unknown action", '[2, "a9", "FooBar", {}]', "a9", "NotImplemented"),
    ("wrong direction", '[2, "a10", "RequestStartTransaction", {"idToken": {"idToken": "x", "type": "Central"}, '
                        '"remoteStartId": 1}]', "a10", "NotSupported"),
    ("id too long", json.dumps([2, "x" * 37, "Heartbeat", {}]), "-1", "RpcFrameworkError"),
    ("id not a string", '[2, 12345, "Heartbeat", {}]', "-1", "RpcFrameworkError"),
    ("NaN literal", '[2, "a11", "Heartbeat", {"x": NaN}]', "a11", "RpcFrameworkError"),
    ("lone surrogate", '[2, "a12", "Heartbeat", {"x": "\\ud800"}]', "a12", "RpcFrameworkError"),
    ("payload not an object", '[2, "a13", "Heartbeat", []]', "a13", "FormatViolation"),
    ("extra property", '[2, "a14", "Heartbeat", {"surprise": 1}]', "a14", "FormatViolation"),
    ("bad enum", '[2, "a15", "StatusNotification", {"timestamp": "2025-01-01T00:00:00Z", '
                 '"connectorStatus": "Sleeping", "evseId": 1, "connectorId": 1}]', "a15",
     "PropertyConstraintViolation"),
    ("huge integer", '[2, "a16", "StatusNotification", {"timestamp": "2025-01-01T00:00:00Z", '
                     '"connectorStatus": "Available", "evseId": 100000000000000000000000, "connectorId": 1}]',
     "a16", "PropertyConstraintViolation"),
    ("binary frame", orjson.dumps([2, "a17", "Heartbeat", {}]), "a17", "RpcFrameworkError"),
]


async def test_hostile_frames_on_201_get_the_spec_answer_and_nothing_goes_down(central: RunningCentral) -> None:
    ws = await _open(central, "H201", "2.0.1")
    bystander = await _open(central, "BYSTANDER", "1.6")
    try:
        for name, frame, message_id, code in CASES_201:
            reply = await _answer(ws, frame)
            assert reply[:3] == [4, message_id, code], name
            assert len(reply) == 5, name
            assert isinstance(reply[3], str), name
            assert len(reply[3]) <= 255, name
            assert isinstance(reply[4], dict), name
        await _still_alive(ws)
        await _still_alive(bystander)
    finally:
        await ws.close()
        await bystander.close()


async def test_hostile_frames_on_16_use_the_16_spellings_and_ignore_what_16_ignores(
        central: RunningCentral) -> None:
    ws = await _open(central, "H16", "1.6")
    try:
        reply = await _answer(ws, '[2, "b1", "Heartbeat", {"surprise": 1}]')
        assert reply[:3] == [4, "b1", "FormationViolation"]
        reply = await _answer(ws, '[2, "b2", "StartTransaction", {"connectorId": 1}]')
        assert reply[:3] == [4, "b2", "OccurenceConstraintViolation"]
        reply = await _answer(ws, '[2, "b3", "Heartbeat", {')
        assert reply[:3] == [4, "b3", "ProtocolError"]  # 1.6 has no RpcFrameworkError
        # 1.6J §4.1.3: an unknown message type is ignored: the next answer is the heartbeat's.
        await ws.send('[9, "b4", "Heartbeat", {}]')
        await ws.send('[3, "nobody-asked", {}]')  # unsolicited CALLRESULT: never answered
        await ws.send('[4, "nobody-asked", "GenericError", "", {}]')
        await _still_alive(ws)
    finally:
        await ws.close()


async def test_thousands_of_unsolicited_results_are_dropped_not_queued(central: RunningCentral) -> None:
    ws = await _open(central, "H201", "2.0.1")
    try:
        for i in range(3000):
            await ws.send(json.dumps([3, f"u{i}", {"status": "Accepted"}]))
        await _still_alive(ws)
        # An operator command still works afterwards: responses are matched, not queued.
        conn = central.system.gateway.live.get("H201") if central.system.gateway else None
        assert conn is not None
        assert conn.outgoing.unsolicited == 3000
    finally:
        await ws.close()


async def test_oversized_frame_closes_only_that_connection(central: RunningCentral) -> None:
    ws = await _open(central, "H201", "2.0.1")
    bystander = await _open(central, "BYSTANDER", "1.6")
    try:
        big = json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 300_000}])
        await ws.send(big)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009  # message too big (RFC 6455 §7.4.1)
        await _still_alive(bystander)
        again = await _open(central, "H201", "2.0.1")  # the charger may come back at once
        await _still_alive(again)
        await again.close()
    finally:
        await bystander.close()


async def test_invalid_utf8_fails_that_websocket_as_rfc6455_requires(central: RunningCentral) -> None:
    # RFC 6455 §8.1: invalid UTF-8 in a text frame MUST fail the connection (close 1007);
    # the server and every other charger stay up.
    ws = await _open(central, "H201", "2.0.1")
    bystander = await _open(central, "BYSTANDER", "1.6")
    try:
        from websockets.frames import Frame, Opcode

        # websockets' client refuses to send invalid UTF-8 as text, so write the frame raw.
        ws.protocol.send_frame(Frame(Opcode.TEXT, b'[2,"u1","Heartbeat",{"x":"\xff\xfe"}]'))
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1007
        await _still_alive(bystander)
    finally:
        await ws.close()
        await bystander.close()


async def test_ocpp21_send_is_never_answered_and_unknown_types_are_ignored(central: RunningCentral) -> None:
    ws = await _open(central, "H21", "2.1")
    try:
        await ws.send(json.dumps([6, "s1", "Heartbeat", {}]))
        await ws.send(json.dumps([9, "s2", "Heartbeat", {}]))
        await ws.send(json.dumps([5, "nobody", "GenericError", "", {}]))
        await _still_alive(ws)  # the first reply we get is the heartbeat's
    finally:
        await ws.close()
