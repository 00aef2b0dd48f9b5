"""JSON nesting is bounded once, at parse (csms.ocpp.framing.MAX_JSON_DEPTH), for every version.

Deeper CALLs get RpcFrameworkError (ProtocolError on 1.6) with their id, whatever the depth (also
beyond orjson's own 1024 levels), never an InternalError with a traceback, and the connection stays
up; within the bound the payload reaches the handler and is stored as sent (no silent cut)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from csms.ocpp.context import Context, ProtocolState, clean_json
from csms.ocpp.errors import RpcFrameworkError
from csms.ocpp.framing import (
    MAX_JSON_DEPTH,
    Call,
    CallResult,
    FrameIgnored,
    FrameRejected,
    build_call_error,
    nesting_depth,
    parse_frame,
)
from csms.ocpp.handlers_common import log_event
from csms.ocpp.types import ChargePointId
from csms.ocpp.validation import known_actions, load_schema
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth

VERSIONS = ("1.6", "2.0.1", "2.1")


def nested(levels: int) -> str:
    """JSON text of ``levels`` nested arrays around a number (levels=0: just the number)."""
    return "[" * levels + "7" + "]" * levels


def data_transfer(message_id: str, data_levels: int, version: str) -> str:
    """A DataTransfer CALL whose ``data`` is ``data_levels`` deep: the payload is one level more."""
    vendor = '"vendorId":"V"'
    return f'[2,"{message_id}","DataTransfer",{{{vendor},"data":{nested(data_levels)}}}]'


def walk_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((walk_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((walk_depth(v) for v in value), default=0)
    return 0


# -- pure: framing -------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_the_deepest_payload_allowed_is_parsed_and_one_more_level_is_refused_with_its_id(version: str) -> None:
    # The payload object is level 1, so data nested MAX_JSON_DEPTH - 1 deep is the limit.
    msg = parse_frame(data_transfer("ok", MAX_JSON_DEPTH - 1, version), version)
    assert isinstance(msg, Call)
    assert walk_depth(msg.payload) == MAX_JSON_DEPTH
    with pytest.raises(FrameRejected) as info:
        parse_frame(data_transfer("deep", MAX_JSON_DEPTH, version), version)
    assert isinstance(info.value.error, RpcFrameworkError)
    assert info.value.message_id == "deep"
    assert str(MAX_JSON_DEPTH) in info.value.error.description


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("levels", [100, 253, 254, 255, 256, 1000, 1022, 1023, 1024, 5000, 100_000])
def test_every_depth_beyond_the_bound_gets_the_same_answer(version: str, levels: int) -> None:
    # Around orjson's write limit (254) and read limit (1024) alike: one rule, one answer.
    with pytest.raises(FrameRejected) as info:
        parse_frame(data_transfer("d", levels, version), version)
    assert isinstance(info.value.error, RpcFrameworkError)
    assert info.value.message_id == "d"
    assert info.value.error.description == f"the payload is nested deeper than {MAX_JSON_DEPTH} levels"


def test_the_16_spelling_of_the_answer_is_protocol_error() -> None:
    with pytest.raises(FrameRejected) as info:
        parse_frame(data_transfer("d", 300, "1.6"), "1.6")
    frame = orjson.loads(build_call_error(info.value.message_id, info.value.error, "1.6"))
    assert frame[:3] == [4, "d", "ProtocolError"]   # 1.6 has no RpcFrameworkError (§4.2.3 Table 7)
    assert frame[4] == {}


@pytest.mark.parametrize("version", VERSIONS)
def test_brackets_inside_strings_do_not_count(version: str) -> None:
    text = '[\\"' + "[" * 3000 + '{\\\\"' + "}" * 50
    frame = json.dumps([2, "s", "DataTransfer", {"vendorId": "V", "data": text, "messageId": "]]]" * 100}])
    msg = parse_frame(frame, version)
    assert isinstance(msg, Call)
    assert msg.payload["data"] == text
    assert nesting_depth(frame) == 2


def test_nesting_depth_agrees_with_a_walk_of_the_parsed_value() -> None:
    rng = random.Random(11)
    strings = ["[", "]", "{", "}", '"', "\\", '\\"[', "x", "ü{", ""]

    def gen(level: int) -> Any:
        roll = rng.random()
        if level > 45 or roll < 0.25:
            return rng.choice([1, None, 2.5, True, rng.choice(strings) * rng.randint(0, 4)])
        if roll < 0.6:
            return [gen(level + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(strings) + str(i): gen(level + 1) for i in range(rng.randint(0, 3))}

    for _ in range(2000):
        value = gen(0)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        assert nesting_depth(text) == walk_depth(value), text
        assert nesting_depth(text.encode()) == walk_depth(value)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_too_deep_response_is_dropped_not_answered(version: str) -> None:
    # Never answer a CALLRESULT or CALLERROR with a CALLERROR (R13).
    with pytest.raises(FrameIgnored):
        parse_frame(f'[3,"r1",{{"data":{nested(300)}}}]', version)
    with pytest.raises(FrameIgnored):
        parse_frame(f'[4,"r2","GenericError","",{{"x":{nested(MAX_JSON_DEPTH)}}}]', version)
    ok = parse_frame(f'[3,"r3",{{"data":{nested(MAX_JSON_DEPTH - 1)}}}]', version)
    assert isinstance(ok, CallResult)


def _fixed_depth(schema: dict[str, Any], root: dict[str, Any], seen: frozenset[str] = frozenset()) -> int:
    """Deepest instance a schema describes (a field of any type counts as a scalar)."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref not in seen, ref  # no recursive OCPP type
        defs = root.get("definitions") or root.get("$defs") or {}
        return _fixed_depth(defs[ref.rsplit("/", 1)[-1]], root, seen | {ref})
    kind = schema.get("type")
    if kind == "object":
        return 1 + max((_fixed_depth(s, root, seen) for s in schema.get("properties", {}).values()), default=0)
    if kind == "array":
        return 1 + _fixed_depth(schema.get("items", {}), root, seen)
    return 0


def test_the_bound_leaves_room_beyond_every_official_schema() -> None:
    deepest = max(_fixed_depth(schema, schema)
                  for version in VERSIONS for action in known_actions(version) for response in (False, True)
                  if (schema := _load(version, action, response)) is not None)
    assert deepest == 13   # 2.0.1/2.1 ReportChargingProfiles (as the constant's comment says)
    assert 2 * deepest <= MAX_JSON_DEPTH


def _load(version: str, action: str, response: bool) -> dict[str, Any] | None:
    try:
        return load_schema(version, action, response)
    except FileNotFoundError:
        return None


def test_what_the_bound_lets_through_is_stored_whole() -> None:
    payload = orjson.loads(f'{{"vendorId":"V","data":{nested(MAX_JSON_DEPTH - 1)}}}')
    state = ProtocolState(charge_point_id=ChargePointId("CP"), version="2.0.1", registration="Accepted")
    ctx = Context(state=state, services=None, received_at=datetime.now(UTC), message_id="m")  # type: ignore[arg-type]
    event = log_event(ctx, "DataTransfer", payload)
    assert event.payload == payload   # the old cut at 32 replaced the deepest values by null
    # ...also wrapped one level deeper, as a tolerated schema violation is stored.
    assert clean_json({"action": "DataTransfer", "payload": payload}) == {"action": "DataTransfer",
                                                                          "payload": payload}
    assert len(event.digest) == 32


# -- real sockets ---------------------------------------------------------------------------

@pytest.fixture
async def central(db_url: str) -> AsyncIterator[RunningCentral]:
    async with running_central(db_url) as c:
        # 1.6 DataTransfer.data is a string: a tolerant charger lets nested data reach the handler,
        # which is where the unbounded depth broke (the digest of the stored message).
        await c.register("NEST16", tolerant=True)
        await c.register("NEST201")
        yield c


async def _open(central: RunningCentral, cp: str, version: str) -> ClientConnection:
    ws = await websockets.connect(f"{central.ws_base}/{cp}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp, PASSWORD), max_size=2**20)
    boot: dict[str, Any] = ({"chargePointVendor": "V", "chargePointModel": "M"} if version == "1.6" else
                            {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
    await ws.send(json.dumps([2, "boot", "BootNotification", boot]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert answer[2]["status"] == "Accepted"
    return ws


@pytest.mark.integration
@pytest.mark.parametrize(("cp", "version", "code"), [("NEST16", "1.6", "ProtocolError"),
                                                     ("NEST201", "2.0.1", "RpcFrameworkError")])
async def test_deep_data_transfer_over_a_socket_gets_the_exact_answer_and_the_connection_stays(
        central: RunningCentral, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
        cp: str, version: str, code: str) -> None:
    caplog.set_level(logging.INFO)
    ws = await _open(central, cp, version)
    try:
        # Payload depth = data levels + 1; MAX_JSON_DEPTH - 1 data levels is the deepest allowed.
        for levels in (MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 100, 255, 256, 1000, 5000):
            message_id = f"dt{levels}"
            await ws.send(data_transfer(message_id, levels, version))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if levels < MAX_JSON_DEPTH:
                assert reply == [3, message_id, {"status": "UnknownVendorId"}], levels
            else:
                assert reply == [4, message_id, code, f"the payload is nested deeper than {MAX_JSON_DEPTH} levels",
                                 {}], levels
            await ws.send(json.dumps([2, f"hb{levels}", "Heartbeat", {}]))   # still open, still answering
            alive = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert alive[:2] == [3, f"hb{levels}"]
    finally:
        await ws.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # The one that was within bounds is stored as sent, the deepest values included.
    stored = await db.fetchval("SELECT payload FROM charger_messages WHERE charge_point_id = $1 "
                               "AND action = 'DataTransfer'", cp)
    assert json.loads(stored)["data"] == json.loads(nested(MAX_JSON_DEPTH - 1))
