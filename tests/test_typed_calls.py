"""The one-pass typed decode of the steady 1.6 CALLs (csms/ocpp/typed_calls.py) against the general path.

The fast path may only say yes: every frame it accepts must be one the general path (orjson, the
framing checks, jsonschema-rs; itself held to the ``jsonschema`` package by
tests/test_validation_differential.py) accepts with the same id, action and payload, value for value
and type for type. Checked over the differential test's generated cases of each schema (valid
examples, and invalid ones mutated at every constrained place), the hostile-frame corpus, and frames
that differ only in how their JSON is written. The valid cases must take the fast path, or it would
be a test of nothing.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from csms.ocpp import typed_codegen
from csms.ocpp.errors import OcppError
from csms.ocpp.framing import Call, FrameIgnored, FrameRejected, parse_frame
from csms.ocpp.typed_calls import typed_call
from csms.ocpp.typed_codegen import ACTIONS_16, UnsupportedSchema
from csms.ocpp.validation import known_actions, validate
from tests.test_ocpp_hostile import CASES_201
from tests.test_validation_differential import cases, reference


def general(frame: str | bytes) -> Call | None:
    """The general path's CALL when it accepts the frame and its payload's schema, else None."""
    try:
        msg = parse_frame(frame, "1.6")
    except (FrameRejected, FrameIgnored):
        return None
    if not isinstance(msg, Call) or msg.action not in known_actions("1.6"):
        return None  # the session answers an unknown action before any schema (csms/ocpp/session.py)
    try:
        validate("1.6", msg.action, msg.payload)
    except OcppError:
        return None
    return msg


def exact(payload: dict[str, Any]) -> bytes:
    """The payload's values with their JSON types (1 is not 1.0), key order aside."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def disagreement(frame: str) -> str | None:
    fast, slow = typed_call(frame, "1.6"), general(frame)
    if fast is None:
        return None
    if slow is None:
        return f"fast path accepts what the general path refuses: {frame[:200]}"
    if (fast.message_id, fast.action) != (slow.message_id, slow.action) or exact(fast.payload) != exact(slow.payload):
        return f"fast path reads {frame[:200]} differently: {fast} vs {slow}"
    assert fast.schema_checked
    assert not slow.schema_checked
    return None


def _beyond_int64(value: Any) -> bool:
    """An integer the Structs leave to the general path (csms/ocpp/typed_codegen.py: msgspec's bounds are int64)."""
    if isinstance(value, dict):
        return any(map(_beyond_int64, value.values()))
    if isinstance(value, list):
        return any(map(_beyond_int64, value))
    return type(value) is int and not -(2**63) <= value < 2**63


@pytest.mark.parametrize("action", ACTIONS_16)
def test_generated_cases_take_the_fast_path_only_when_valid(action: str) -> None:
    problems, fast_valid, valid = [], 0, 0
    check = reference("1.6", action, False)
    for label, payload in cases("1.6", action, False):
        try:
            frame = orjson.dumps([2, "id-1", action, payload]).decode()
        except TypeError:  # a mutation that is no JSON value at all
            continue
        is_valid = check.is_valid(orjson.loads(frame)[3])
        problem = disagreement(frame)
        if problem:
            problems.append(f"{label}: {problem}")
        if is_valid and not _beyond_int64(orjson.loads(frame)):
            valid += 1
            fast_valid += typed_call(frame, "1.6") is not None
        elif not is_valid:
            assert typed_call(frame, "1.6") is None, (label, frame)
    assert not problems, "\n".join(problems[:10])
    assert valid >= 4
    assert fast_valid == valid  # every valid case is answered by the fast path


def test_hostile_corpus_frames_agree() -> None:
    frames = [frame for _, frame, _, _ in CASES_201 if isinstance(frame, str)]
    problems = [p for p in map(disagreement, frames) if p]
    assert not problems, "\n".join(problems)
    assert len(frames) >= 15


HEARTBEAT = '[2,"h1","Heartbeat",{}]'
METER = ('[2,"m1","MeterValues",{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":'
         '"2026-01-02T03:04:05.123Z","sampledValue":[{"value":"12.5","unit":"kWh"}]}]}]')

# Frames that are the same CALL written differently, or nearly the same CALL; each either takes the fast
# path with the general path's reading, or goes the general path.
WRITTEN_DIFFERENTLY = [
    HEARTBEAT, METER, f" \n\t{METER} \r\n", json.dumps(json.loads(METER), indent=2),
    json.dumps(json.loads(METER), separators=(" , ", " : ")),
    METER.replace('"unit":"kWh"', '"unit":"\\u006bWh"'),               # an escaped enum value
    METER.replace('"connectorId":1', '"connectorId":1,"connectorId":2'),  # a repeated key: the last one
    METER.replace('"transactionId":7', '"transactionId":7.0'),           # 7.0 is no draft-04 integer
    METER.replace('"transactionId":7', '"transactionId":-0'),
    METER.replace('"transactionId":7', f'"transactionId":{2**63 - 1}'),
    METER.replace('"transactionId":7', f'"transactionId":{2**63}'),      # orjson's int, beyond int64
    METER.replace('"transactionId":7', f'"transactionId":{2**64}'),      # a float to orjson
    METER.replace('"transactionId":7', '"transactionId":1e2'),
    METER.replace('"transactionId":7', '"transactionId":null'),
    METER.replace('"transactionId":7', '"transactionId":true'),
    METER.replace('"12.5"', '"\\ud800"'),                               # a lone surrogate
    METER.replace('"12.5"', '"\\u0000"'),
    METER.replace('2026-01-02T03:04:05.123Z', '2026-02-30T03:04:05Z'),   # no such day
    METER.replace('2026-01-02T03:04:05.123Z', '2026-01-02t03:04:05z'),   # RFC 3339 §5.6 NOTE
    METER.replace('2026-01-02T03:04:05.123Z', '2026-01-02T03:04:05'),    # no offset
    METER.replace('[2,"m1"', '[2.0,"m1"'), METER.replace('[2,"m1"', '[2,"' + "x" * 37 + '"'),
    METER.replace('[2,"m1"', '[2,""'), METER.replace('[2,"m1"', '[2,"m\\u0031"'), METER.replace('[2,"m1"', '[2,1'),
    METER.replace('"MeterValues"', '"metervalues"'), METER[:-1] + ',{}]', METER + " x", "\ufeff" + METER,
    METER.replace('"value":"12.5"', '"value":"12.5","extra":1'), METER.replace(',"unit":"kWh"', ',"unit":"kwh"'),
    '[2,"m1","MeterValues",{"connectorId":1,"meterValue":[]}]',                # minItems
    '[2,"s1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available","info":"' + "i" * 50
    + '"}]',
    '[2,"s1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available","info":"' + "i" * 51
    + '"}]',
    '[2,"t1","StartTransaction",{"connectorId":1,"idTag":"ABC","meterStart":0,"timestamp":"2026-01-02T03:04:05Z"}]',
    '[2,"t1","StopTransaction",{"meterStop":10,"transactionId":3,"timestamp":"2026-01-02T03:04:05Z",'
    '"transactionData":[{"timestamp":"not a time","sampledValue":[{"value":"1"}]}]}]',
]


@pytest.mark.parametrize("frame", WRITTEN_DIFFERENTLY)
def test_frames_written_differently_agree(frame: str) -> None:
    assert disagreement(frame) is None


def test_the_fast_path_is_taken_where_it_should_be() -> None:
    assert typed_call(HEARTBEAT, "1.6") == Call("h1", "Heartbeat", {}, schema_checked=True)
    meter = typed_call(METER, "1.6")
    assert meter is not None
    assert meter.payload == orjson.loads(METER)[3]
    repeated = typed_call(METER.replace('"connectorId":1', '"connectorId":1,"connectorId":2'), "1.6")
    assert repeated is not None
    assert repeated.payload["connectorId"] == 2
    # Not for other versions, binary frames, actions without Structs, or a frame the Structs refuse.
    assert typed_call(HEARTBEAT, "2.0.1") is None
    assert typed_call(HEARTBEAT.encode(), "1.6") is None
    assert typed_call('[2,"d1","DataTransfer",{"vendorId":"V"}]', "1.6") is None
    assert typed_call(METER.replace("2026-01-02T03:04:05.123Z", "2026-02-30T03:04:05Z"), "1.6") is None


def test_the_generated_module_is_what_the_schemas_give() -> None:
    assert typed_codegen.main(["--check"]) == 0, "run python -m csms.ocpp.typed_codegen --write"
    assert typed_codegen.generate() == typed_codegen.TARGET.read_text(encoding="utf-8")


def test_the_generator_writes_and_prints(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(typed_codegen, "TARGET", tmp_path / "typed_v16.py")
    (tmp_path / "typed_v16.py").write_text("stale", encoding="utf-8")
    assert typed_codegen.main(["--check"]) == 1
    assert typed_codegen.main(["--write"]) == 0
    assert typed_codegen.main(["--check"]) == 0
    assert typed_codegen.main([]) == 0
    assert capsys.readouterr().out == typed_codegen.generate()


def _type_of(schema: dict[str, Any]) -> str:
    return typed_codegen._Generator().type_of(schema, "X", ("x",))


def test_the_generator_translates_integer_bounds_and_booleans() -> None:
    assert _type_of({"type": "integer", "minimum": 0, "maximum": 10}) == "Annotated[int, msgspec.Meta(ge=0, le=10)]"
    assert _type_of({"type": "integer"}) == "JsonInt"
    assert _type_of({"type": "boolean"}) == "bool"
    assert _type_of({"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 3}) == (
        "Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=3)]")


@pytest.mark.parametrize("schema", [
    {"type": "number"},                                          # a double's arithmetic is not the schema's
    {"type": ["string", "null"]},
    {"type": "string", "format": "uri"},
    {"type": "string", "pattern": "^a"},
    {"type": "integer", "exclusiveMinimum": True, "minimum": 0},
    {"type": "integer", "minimum": 0.5},
    {"type": "array"},                                           # any items
    {"type": "array", "items": [{"type": "string"}]},            # a tuple of schemas
    {"type": "string", "enum": ["a"], "maxLength": 1},
    {"type": "string", "enum": [1]},
    {"type": "object", "properties": {}},                        # admits unknown properties
    {"type": "object", "properties": {}, "additionalProperties": True},
    {"type": "object", "properties": {}, "additionalProperties": False, "required": ["a"]},
    {"type": "object", "properties": {"not-a-name": {"type": "string"}}, "additionalProperties": False},
    {"type": "object", "properties": {"class": {"type": "string"}}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}, "additionalProperties": False},
])
def test_the_generator_refuses_what_it_cannot_translate_exactly(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchema):
        _type_of(schema)
