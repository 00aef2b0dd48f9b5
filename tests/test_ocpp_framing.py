"""Unit tests of OCPP-J framing: parse_frame and build_* against hostile input (R7–R13, R54).

No sockets: strings in, messages or the CALLERROR to answer out.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from csms.ocpp.errors import (
    MAX_DESCRIPTION_CHARS,
    FormatViolation,
    GenericError,
    InternalError,
    MessageTypeNotSupported,
    NotImplementedAction,
    NotSupportedAction,
    OccurrenceConstraintViolation,
    OcppError,
    PropertyConstraintViolation,
    ProtocolError,
    RpcFrameworkError,
    SecurityError,
    TypeConstraintViolation,
    canonical_code,
    wire_code,
)
from csms.ocpp.framing import (
    UNREADABLE_ID,
    Call,
    CallError,
    CallResult,
    CallResultError,
    FrameIgnored,
    FrameRejected,
    Send,
    build_call,
    build_call_error,
    build_call_result,
    parse_frame,
)

VERSIONS = ("1.6", "2.0.1", "2.1")

# Every error code a 1.6J CALLERROR may carry (1.6J §4.2.3 Table 7).
V16_CODES = frozenset({
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError", "FormationViolation",
    "PropertyConstraintViolation", "OccurenceConstraintViolation", "TypeConstraintViolation", "GenericError",
})
# Every error code a 2.0.1/2.1 CALLERROR may carry (2.0.1 Part 4 §4.3 Table 8; 2.1 Table 9).
V2_CODES = frozenset({
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented",
    "NotSupported", "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
    "RpcFrameworkError", "SecurityError", "TypeConstraintViolation",
})
ALL_ERRORS: tuple[type[OcppError], ...] = (
    FormatViolation, OccurrenceConstraintViolation, PropertyConstraintViolation, TypeConstraintViolation,
    RpcFrameworkError, ProtocolError, MessageTypeNotSupported, NotImplementedAction, NotSupportedAction,
    SecurityError, InternalError, GenericError,
)


def rejected(raw: str | bytes, version: str) -> FrameRejected:
    with pytest.raises(FrameRejected) as info:
        parse_frame(raw, version)
    return info.value


def ignored(raw: str | bytes, version: str) -> FrameIgnored:
    with pytest.raises(FrameIgnored) as info:
        parse_frame(raw, version)
    return info.value


def decoded(frame: str) -> list[Any]:
    value = orjson.loads(frame)
    assert isinstance(value, list)
    return value


# --- valid frames ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_call_parses(version: str) -> None:
    msg = parse_frame('[2, "id-1", "Heartbeat", {}]', version)
    assert msg == Call("id-1", "Heartbeat", {})


@pytest.mark.parametrize("version", VERSIONS)
def test_binary_frame_parses_like_text(version: str) -> None:
    assert parse_frame(b'[2,"id-1","Heartbeat",{"a":[1,2]}]', version) == Call("id-1", "Heartbeat", {"a": [1, 2]})


@pytest.mark.parametrize("version", VERSIONS)
def test_call_result_and_call_error_parse(version: str) -> None:
    assert parse_frame('[3,"m1",{"status":"Accepted"}]', version) == CallResult("m1", {"status": "Accepted"})
    assert parse_frame('[4,"m1","NotSupported","nope",{"a":1}]', version) == CallError(
        "m1", "NotSupported", "nope", {"a": 1})


@pytest.mark.parametrize("version", VERSIONS)
def test_message_id_of_exactly_36_chars_is_readable(version: str) -> None:
    mid = "x" * 36
    assert parse_frame(f'[2,"{mid}","Heartbeat",{{}}]', version) == Call(mid, "Heartbeat", {})


@pytest.mark.parametrize("version", VERSIONS)
def test_nul_in_strings_parses(version: str) -> None:
    # NUL is legal JSON; it is cleaned before storage (clean_text), not rejected here.
    msg = parse_frame('[2,"a","DataTransfer",{"vendorId":"v\\u0000x"}]', version)
    assert isinstance(msg, Call)
    assert msg.payload == {"vendorId": "v\x00x"}


@pytest.mark.parametrize("version", VERSIONS)
def test_huge_integer_becomes_float_but_parses(version: str) -> None:
    msg = parse_frame('[2,"a","StatusNotification",{"connectorId":100000000000000000000000}]', version)
    assert isinstance(msg, Call)
    assert msg.payload["connectorId"] == 1e23


@pytest.mark.parametrize("version", VERSIONS)
def test_action_of_64_chars_is_accepted(version: str) -> None:
    action = "A" * 64
    assert parse_frame(f'[2,"a","{action}",{{}}]', version) == Call("a", action, {})


# --- not JSON -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_json_without_readable_id_answers_minus_one(version: str) -> None:
    exc = rejected("not json at all", version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == UNREADABLE_ID == "-1"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("raw", "expected_id"), [
    ('[2, "abc-123", "Heartbeat", {', "abc-123"),
    ('  [ 2 , "id-1" , "Heartbeat" , {,}]', "id-1"),
    ('[2,"a","BootNotification",[,{}]', "a"),
])
def test_invalid_json_of_a_call_recovers_the_id(version: str, raw: str, expected_id: str) -> None:
    exc = rejected(raw, version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == expected_id


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("raw", [
    '[2, "' + "x" * 37 + '", "Heartbeat", {',  # id too long to recover
    '[2, "ab\\"c", "Heartbeat", {',  # escaped quote: do not guess
    '[3, "abc", {',  # not a CALL: its id is not ours to answer
    '[2, 17, "Heartbeat", {',  # integer id
    "",
])
def test_invalid_json_with_unrecoverable_id_answers_minus_one(version: str, raw: str) -> None:
    exc = rejected(raw, version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_json_description_does_not_echo_the_frame(version: str) -> None:
    raw = '[2,"a","DataTransfer",{"data":"' + "SECRET" * 100 + '"'  # unterminated
    exc = rejected(raw, version)
    assert "SECRET" not in exc.error.description
    assert len(exc.error.description) <= MAX_DESCRIPTION_CHARS


@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_utf8_bytes_are_rejected(version: str) -> None:
    exc = rejected(b'[2,"a","Heartbeat",{"x":"\xff"}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "a"
    exc = rejected(b"\xff\xfe[2", version)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("version", VERSIONS)
def test_deep_nesting_is_rejected_not_recursion_error(version: str) -> None:
    exc = rejected("[" * 100_000, version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("version", VERSIONS)
def test_deep_nesting_inside_a_call_is_rejected_with_its_id(version: str) -> None:
    exc = rejected('[2,"deep","DataTransfer",{"data":' + "[" * 100_000 + "]" * 100_000 + "}]", version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "deep"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_literals_are_rejected(version: str, literal: str) -> None:
    exc = rejected(f'[2,"n1","MeterValues",{{"x":{literal}}}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "n1"


@pytest.mark.parametrize("version", VERSIONS)
def test_lone_surrogate_escape_does_not_crash(version: str) -> None:
    # orjson refuses a lone surrogate, so the frame is answered with the recovered id.
    exc = rejected('[2,"s1","DataTransfer",{"vendorId":"\\ud800"}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "s1"


@pytest.mark.parametrize("version", VERSIONS)
def test_lone_surrogate_in_python_str_does_not_crash(version: str) -> None:
    exc = rejected('[2,"s2","DataTransfer",{"vendorId":"\ud800"}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "s2"


# --- JSON, but not an RPC frame -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("raw", ['{"a":1}', "[]", "2", '"text"', "null", "true"])
def test_not_an_array_or_empty_array(version: str, raw: str) -> None:
    exc = rejected(raw, version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mtype", ['"2"', "true", "false", "2.0", "null", "[2]", "{}"])
def test_message_type_not_an_integer(version: str, mtype: str) -> None:
    exc = rejected(f'[{mtype},"t1","Heartbeat",{{}}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "t1"


@pytest.mark.parametrize("version", VERSIONS)
def test_message_type_not_an_integer_without_id(version: str) -> None:
    exc = rejected('["2"]', version)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("mtype", [0, 1, 5, 6, 7, 99, -2])
def test_unknown_message_type_on_201_is_message_type_not_supported(mtype: int) -> None:
    exc = rejected(f'[{mtype},"u1","Heartbeat",{{}}]', "2.0.1")
    assert isinstance(exc.error, MessageTypeNotSupported)
    assert exc.message_id == "u1"


def test_unknown_message_type_on_201_without_readable_id() -> None:
    exc = rejected("[9,5]", "2.0.1")
    assert isinstance(exc.error, MessageTypeNotSupported)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("mtype", [0, 1, 5, 6, 7, 99])
def test_unknown_message_type_on_16_is_ignored(mtype: int) -> None:
    assert "unknown message type" in ignored(f'[{mtype},"u1","Heartbeat",{{}}]', "1.6").reason


@pytest.mark.parametrize("mtype", [0, 1, 7, 99])
def test_unknown_message_type_on_21_is_ignored(mtype: int) -> None:
    assert "unknown message type" in ignored(f'[{mtype},"u1","Heartbeat",{{}}]', "2.1").reason


# --- malformed CALLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("raw", ['[2,"c1","Heartbeat"]', '[2,"c1","Heartbeat",{},{}]', '[2,"c1"]'])
def test_call_with_wrong_element_count(version: str, raw: str) -> None:
    exc = rejected(raw, version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "c1"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("action", ['{"a":1}', "[1]", "5", "null", "true", '""', '"' + "A" * 65 + '"'])
def test_action_not_a_short_string(version: str, action: str) -> None:
    exc = rejected(f'[2,"c2",{action},{{}}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "c2"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("message_id", ['"' + "x" * 37 + '"', "17", "null", '""', '{"a":1}', "[1]", "1.5"])
def test_unreadable_message_id_answers_minus_one(version: str, message_id: str) -> None:
    exc = rejected(f'[2,{message_id},"Heartbeat",{{}}]', version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("version", VERSIONS)
def test_call_without_id(version: str) -> None:
    exc = rejected("[2]", version)
    assert isinstance(exc.error, RpcFrameworkError)
    assert exc.message_id == "-1"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("payload", ["null", "[]", "[{}]", '"x"', "1", "true"])
def test_payload_not_an_object_is_format_violation(version: str, payload: str) -> None:
    exc = rejected(f'[2,"p1","Heartbeat",{payload}]', version)
    assert isinstance(exc.error, FormatViolation)
    assert exc.message_id == "p1"


def test_payload_not_an_object_on_16_is_spelled_formation_violation() -> None:
    exc = rejected('[2,"p1","Heartbeat",null]', "1.6")
    frame = build_call_error(exc.message_id, exc.error, "1.6")
    assert decoded(frame)[:3] == [4, "p1", "FormationViolation"]


# --- CALLRESULT / CALLERROR are never answered (R13) ----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("raw", [
    '[3,"r1"]', '[3,"r1",{},{}]', '[3,"r1",[]]', '[3,"r1",null]', '[3,5,{}]', "[3]", '[3,"' + "x" * 37 + '",{}]',
    '[4,"r1"]', '[4,"r1",5,"",{}]', "[4,null,\"GenericError\",\"\",{}]", "[4]",
])
def test_malformed_call_result_or_error_is_ignored(version: str, raw: str) -> None:
    ignored(raw, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_call_error_with_odd_description_and_details_is_read_leniently(version: str) -> None:
    assert parse_frame('[4,"e1","GenericError",5,[]]', version) == CallError("e1", "GenericError", "", {})
    assert parse_frame('[4,"e1","GenericError"]', version) == CallError("e1", "GenericError", "", {})


# --- 2.1 SEND and CALLRESULTERROR -----------------------------------------------------------------------------


def test_send_parses_on_21() -> None:
    assert parse_frame('[6,"s1","NotifyPeriodicEventStream",{"id":1}]', "2.1") == Send(
        "s1", "NotifyPeriodicEventStream", {"id": 1})


def test_call_result_error_parses_on_21() -> None:
    assert parse_frame('[5,"r1","FormatViolation","bad",{"x":1}]', "2.1") == CallResultError(
        "r1", "FormatViolation", "bad", {"x": 1})


@pytest.mark.parametrize("raw", ['[6,"s1","A"]', '[6,"s1",5,{}]', '[6,"s1","A",[]]', "[6,5,\"A\",{}]",
                                 '[5,"r1"]', '[5,"r1",5]'])
def test_malformed_send_or_call_result_error_is_ignored_on_21(raw: str) -> None:
    ignored(raw, "2.1")


@pytest.mark.parametrize("raw", ['[6,"s1","NotifyPeriodicEventStream",{}]', '[5,"r1","FormatViolation","",{}]'])
def test_send_and_call_result_error_on_201_are_message_type_not_supported(raw: str) -> None:
    exc = rejected(raw, "2.0.1")
    assert isinstance(exc.error, MessageTypeNotSupported)


@pytest.mark.parametrize("raw", ['[6,"s1","NotifyPeriodicEventStream",{}]', '[5,"r1","FormatViolation","",{}]'])
def test_send_and_call_result_error_on_16_are_ignored(raw: str) -> None:
    ignored(raw, "1.6")


# --- building frames ------------------------------------------------------------------------------------------


def test_build_call_and_call_result_round_trip() -> None:
    frame = build_call("id-7", "Reset", {"type": "Soft"})
    assert decoded(frame) == [2, "id-7", "Reset", {"type": "Soft"}]
    assert parse_frame(frame, "1.6") == Call("id-7", "Reset", {"type": "Soft"})
    frame = build_call_result("id-7", {"currentTime": "2024-01-01T00:00:00.000Z"})
    assert decoded(frame) == [3, "id-7", {"currentTime": "2024-01-01T00:00:00.000Z"}]
    assert parse_frame(frame, "2.0.1") == CallResult("id-7", {"currentTime": "2024-01-01T00:00:00.000Z"})


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("error_cls", ALL_ERRORS)
def test_call_error_shape(version: str, error_cls: type[OcppError]) -> None:
    frame = decoded(build_call_error("m-1", error_cls(), version))
    assert len(frame) == 5
    assert frame[0] == 4
    assert frame[1] == "m-1"
    assert frame[3] == ""  # an empty description is "" (R13)
    assert frame[4] == {}  # details always an object
    assert frame[2] in (V16_CODES if version == "1.6" else V2_CODES)


@pytest.mark.parametrize("version", VERSIONS)
def test_call_error_keeps_description_and_details(version: str) -> None:
    error = PropertyConstraintViolation("connectorId: out of range", {"field": "connectorId"})
    frame = decoded(build_call_error("m-2", error, version))
    assert frame == [4, "m-2", "PropertyConstraintViolation", "connectorId: out of range", {"field": "connectorId"}]


def test_call_error_description_is_truncated_to_255() -> None:
    frame = decoded(build_call_error("m-3", GenericError("x" * 1000), "2.0.1"))
    assert len(frame[3]) == MAX_DESCRIPTION_CHARS == 255


@pytest.mark.parametrize("version", VERSIONS)
def test_rejected_frames_build_valid_call_errors(version: str) -> None:
    for raw in ("not json", "[" * 100_000, '[2,17,"Heartbeat",{}]', '[2,"a","H",{},1]', '[2,"a",{"a":1},{}]'):
        exc = rejected(raw, version)
        frame = decoded(build_call_error(exc.message_id, exc.error, version))
        assert len(frame) == 5
        assert isinstance(frame[4], dict)
        assert frame[2] == ("ProtocolError" if version == "1.6" else "RpcFrameworkError")


@pytest.mark.parametrize(("canonical", "v16"), [
    ("FormatViolation", "FormationViolation"),
    ("OccurrenceConstraintViolation", "OccurenceConstraintViolation"),
    ("RpcFrameworkError", "ProtocolError"),
    ("MessageTypeNotSupported", "NotSupported"),
    ("PropertyConstraintViolation", "PropertyConstraintViolation"),
    ("TypeConstraintViolation", "TypeConstraintViolation"),
    ("NotImplemented", "NotImplemented"),
    ("NotSupported", "NotSupported"),
    ("SecurityError", "SecurityError"),
    ("InternalError", "InternalError"),
    ("GenericError", "GenericError"),
    ("ProtocolError", "ProtocolError"),
])
def test_wire_code_per_version(canonical: str, v16: str) -> None:
    assert wire_code(canonical, "1.6") == v16
    assert wire_code(canonical, "2.0.1") == canonical
    assert wire_code(canonical, "2.1") == canonical


def test_canonical_code_accepts_both_spellings() -> None:
    assert canonical_code("FormationViolation") == "FormatViolation"
    assert canonical_code("FormatViolation") == "FormatViolation"
    assert canonical_code("OccurenceConstraintViolation") == "OccurrenceConstraintViolation"
    assert canonical_code("OccurrenceConstraintViolation") == "OccurrenceConstraintViolation"
    assert canonical_code("NotSupported") == "NotSupported"
    assert canonical_code("VendorSpecific") == "VendorSpecific"


def test_error_description_is_bounded_and_details_default_to_empty() -> None:
    error = FormatViolation("y" * 300)
    assert len(error.description) == MAX_DESCRIPTION_CHARS
    assert error.details == {}
    assert FormatViolation().description == ""
