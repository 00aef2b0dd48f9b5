"""OCPP-J RPC framing: parse a text frame into a typed message, build frames back.

Message types (1.6J §4.1.3, §4.2; 2.0.1 Part 4 §4.1.3, §4.2; 2.1 Part 4 §4.2.3/§4.2.4):
``[2, id, action, payload]`` CALL, ``[3, id, payload]`` CALLRESULT,
``[4, id, code, description, details]`` CALLERROR, and on 2.1 only
``[5, id, code, description, details]`` CALLRESULTERROR and ``[6, id, action, payload]`` SEND.

``parse_frame`` either returns a message, returns None (the spec says to ignore the
frame), or raises ``FrameRejected`` carrying the CALLERROR to answer, with ``"-1"``
as the id when the id cannot be read (2.0.1 Part 4 §4.2.3).

Nesting is bounded here, once, for every version: nothing nested deeper than
``MAX_JSON_DEPTH`` reaches a handler, the store or a digest.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from csms.ocpp.errors import (
    FormatViolation,
    MessageTypeNotSupported,
    OcppError,
    RpcFrameworkError,
    wire_code,
)

MESSAGE_ID_MAX_CHARS = 36  # 1.6J §4.1.4 Table 3; 2.0.1 Part 4 §4.1.4 Table 4
ACTION_MAX_CHARS = 64
UNREADABLE_ID = "-1"

# The deepest payload accepted, in levels of JSON containers (the payload object is level 1).
# The official schemas need at most 13 (2.0.1/2.1 ReportChargingProfiles; a test checks every
# schema); the rest is room for vendor data (2.x DataTransfer.data, customData). Without a
# bound a payload is readable up to orjson's 1024 levels but cannot be written back beyond
# 254 (digest, jsonb, the bus), and it costs recursion everywhere it goes. A deeper CALL is not
# an RPC message this receiver can take: RpcFrameworkError (2.0.1/2.1 Part 4 §4.3, "content of
# the call is not a valid RPC request"; ProtocolError on 1.6, §4.2.3 Table 7), with its id when
# the id is readable, answered whatever the depth, also beyond orjson's own limit (which always
# got RpcFrameworkError). Not FormatViolation: the limit is the framework's, like the frame size,
# and such a payload never gets to the Action's schema; one rule and one answer for every depth.
MAX_JSON_DEPTH = 32

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND = 2, 3, 4, 5, 6

# Recover the id of a CALL whose JSON does not parse, to answer it rather than "-1".
_ID_PREFIX = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')

# Depth of valid JSON text, in C-speed passes: escapes and strings removed, both bracket kinds made one.
_TO_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_NOT_SKELETON = bytes(c for c in range(256) if c not in b'[]{}"\\')

# The message types are msgspec Structs, not frozen dataclasses: one of each is built per frame, and a
# frozen dataclass's __init__ sets every field through object.__setattr__ (431 ns for a Call against
# the Struct's 61, issue 15 note).
class Call(msgspec.Struct, frozen=True):
    message_id: str
    action: str
    payload: dict[str, Any]
    # True when the payload was decoded and checked against its schema in one pass (csms/ocpp/typed_calls.py).
    schema_checked: bool = False


class CallResult(msgspec.Struct, frozen=True):
    message_id: str
    payload: dict[str, Any]


class CallError(msgspec.Struct, frozen=True):
    message_id: str
    code: str
    description: str
    details: dict[str, Any]


class Send(msgspec.Struct, frozen=True):
    """2.1 SEND: a message that gets no answer at all (2.1 §4.2.4)."""

    message_id: str
    action: str
    payload: dict[str, Any]


class CallResultError(msgspec.Struct, frozen=True):
    """2.1 CALLRESULTERROR: the peer could not process one of our CALLRESULTs."""

    message_id: str
    code: str
    description: str
    details: dict[str, Any]


Message = Call | CallResult | CallError | Send | CallResultError


class FrameRejected(Exception):
    """The frame is answered with a CALLERROR built from ``error`` for ``message_id``."""

    def __init__(self, error: OcppError, message_id: str) -> None:
        super().__init__(error.description)
        self.error = error
        self.message_id = message_id


class FrameIgnored(Exception):
    """The spec says to ignore this frame (it gets no answer); ``reason`` is for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def nesting_depth(raw: str | bytes, stop_after: int | None = None) -> int:
    """Levels of containers in JSON text that orjson has read (so: valid JSON), e.g. 2 for
    ``[2,"a","Heartbeat",{}]``; ``stop_after + 1`` as soon as it is known to be deeper.

    Valid JSON lets this work on the text with bytes operations only (7 µs for a 3 kB MeterValues
    of 40 samples on a busy machine where orjson parses it in 11 µs; a walk over the parsed
    objects costs several times more; frames with at most MAX_JSON_DEPTH + 1 brackets, most
    frames, are not looked at). Keep
    brackets, quotes and backslashes: when no string holds an escape or a bracket, every string
    is then ``""`` and removing those leaves the structure. Otherwise take the strings out
    exactly: drop escaped backslashes, then escaped quotes, and every quote left delimits a
    string (UTF-8 multi-byte sequences contain no ASCII byte). Each pass removing every ``[]``
    removes exactly the innermost level, so the number of passes is the depth.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    skeleton = data.translate(_TO_BRACKETS, _NOT_SKELETON)
    brackets = skeleton.replace(b'""', b"")
    if b"\\" in skeleton or b'"' in brackets:
        outside = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
        brackets = outside.translate(_TO_BRACKETS, _NOT_BRACKETS)
    depth = 0
    while brackets and (stop_after is None or depth <= stop_after):
        brackets = brackets.replace(b"[]", b"")
        depth += 1
    return depth


def _too_deep(raw: str | bytes) -> bool:
    opening = raw.count("[") + raw.count("{") if isinstance(raw, str) else raw.count(b"[") + raw.count(b"{")
    if opening <= MAX_JSON_DEPTH + 1:
        return False  # too few brackets to be too deep: most frames need nothing more
    limit = MAX_JSON_DEPTH + 1  # the frame array is one level more than the payload
    return nesting_depth(raw, stop_after=limit) > limit


def _depth_error() -> RpcFrameworkError:
    return RpcFrameworkError(f"the payload is nested deeper than {MAX_JSON_DEPTH} levels")


def _readable_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MESSAGE_ID_MAX_CHARS:
        return value
    return None


def parse_frame(raw: str | bytes, version: str) -> Message:
    """Parse one frame received on a connection of OCPP ``version`` ('1.6', '2.0.1', '2.1')."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = raw if isinstance(raw, str) else raw[:128].decode("utf-8", "replace")
        match = _ID_PREFIX.match(text[:128])
        # Beyond orjson's own depth limit (1024) the answer is the same as beyond ours.
        too_deep = "depth limit" in str(exc) or "recursion limit" in str(exc)
        error = _depth_error() if too_deep else RpcFrameworkError(f"frame is not valid JSON: {exc}")
        raise FrameRejected(error, match.group(1) if match else UNREADABLE_ID) from None
    if not isinstance(msg, list) or not msg:
        raise FrameRejected(RpcFrameworkError("frame is not a JSON array"), UNREADABLE_ID)
    mtype = msg[0]
    message_id = _readable_id(msg[1]) if len(msg) > 1 else None
    if not isinstance(mtype, int) or isinstance(mtype, bool):
        raise FrameRejected(RpcFrameworkError("message type is not a number"), message_id or UNREADABLE_ID)
    if mtype in (CALLRESULT, CALLERROR) or (version == "2.1" and mtype in (CALLRESULTERROR, SEND)):
        if message_id is not None and _too_deep(raw):
            # Never answered with a CALLERROR (R13; a SEND gets no answer, 2.1 §4.2.4): dropped, as
            # other unusable responses are; the command waiting for it times out.
            raise FrameIgnored(f"type {mtype} frame nested deeper than {MAX_JSON_DEPTH} levels")
        return _parse_other(msg, mtype, message_id)
    if mtype != CALL:
        if version == "2.0.1":
            # 2.0.1 Part 4 §4.4: answer an unknown message type with MessageTypeNotSupported.
            raise FrameRejected(MessageTypeNotSupported(f"message type {mtype} is not supported"),
                                message_id or UNREADABLE_ID)
        # 1.6J §4.1.3 and 2.1 §4.1.3/§4.4: the receiver SHALL ignore the message.
        raise FrameIgnored(f"unknown message type {mtype}")
    if message_id is None:
        raise FrameRejected(RpcFrameworkError("message id is missing, not a string, or longer than 36"),
                            UNREADABLE_ID)
    if len(msg) != 4:
        raise FrameRejected(RpcFrameworkError(f"a CALL has 4 elements, this one has {len(msg)}"), message_id)
    action, payload = msg[2], msg[3]
    if not isinstance(action, str) or not action or len(action) > ACTION_MAX_CHARS:
        raise FrameRejected(RpcFrameworkError("action is not a short string"), message_id)
    if not isinstance(payload, dict):
        raise FrameRejected(FormatViolation("payload is not a JSON object"), message_id)
    if _too_deep(raw):
        raise FrameRejected(_depth_error(), message_id)
    return Call(message_id, action, payload)


def _parse_other(msg: list[Any], mtype: int, message_id: str | None) -> Message:
    # Never answer a CALLRESULT or CALLERROR with a CALLERROR (1.6J §4.2.3, 2.0.1 Part 4 §4.2.3; R13):
    # malformed ones are ignored.
    if message_id is None:
        raise FrameIgnored(f"type {mtype} frame without a readable id")
    if mtype == CALLRESULT:
        if len(msg) != 3 or not isinstance(msg[2], dict):
            raise FrameIgnored("malformed CALLRESULT")
        return CallResult(message_id, msg[2])
    if mtype == SEND:
        if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            raise FrameIgnored("malformed SEND")
        return Send(message_id, msg[2], msg[3])
    if len(msg) < 3 or not isinstance(msg[2], str):
        raise FrameIgnored("malformed CALLERROR")
    description = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
    details = msg[4] if len(msg) > 4 and isinstance(msg[4], dict) else {}
    cls = CallError if mtype == CALLERROR else CallResultError
    return cls(message_id, msg[2], description, details)


def build_call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([CALL, message_id, action, payload]).decode()


def build_call_result(message_id: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([CALLRESULT, message_id, payload]).decode()


def build_call_error(message_id: str, error: OcppError, version: str) -> str:
    # Exactly 5 elements; description "" when empty; details always an object (R13 [1.6J §4.2.3, 2.0.1 Part 4 §4.2.3]).
    return orjson.dumps([CALLERROR, message_id, wire_code(error.code, version), error.description,
                         error.details]).decode()
