"""OCPP-J RPC framing: parse a text frame into a typed message, build frames back.

Message types (1.6J §4.1.3, §4.2; 2.0.1 Part 4 §4.1.3, §4.2; 2.1 Part 4 §4.2.3/§4.2.4):
``[2, id, action, payload]`` CALL, ``[3, id, payload]`` CALLRESULT,
``[4, id, code, description, details]`` CALLERROR, and on 2.1 only
``[5, id, code, description, details]`` CALLRESULTERROR and ``[6, id, action, payload]`` SEND.

``parse_frame`` either returns a message, returns None (the spec says to ignore the
frame), or raises ``FrameRejected`` carrying the CALLERROR to answer, with ``"-1"``
as the id when the id cannot be read (2.0.1 Part 4 §4.2.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND = 2, 3, 4, 5, 6

# Recover the id of a CALL whose JSON does not parse, to answer it rather than "-1".
_ID_PREFIX = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    message_id: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Send:
    """2.1 SEND: a message that gets no answer at all (2.1 §4.2.4)."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResultError:
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
        raise FrameRejected(RpcFrameworkError(f"frame is not valid JSON: {exc}"),
                            match.group(1) if match else UNREADABLE_ID) from None
    if not isinstance(msg, list) or not msg:
        raise FrameRejected(RpcFrameworkError("frame is not a JSON array"), UNREADABLE_ID)
    mtype = msg[0]
    message_id = _readable_id(msg[1]) if len(msg) > 1 else None
    if not isinstance(mtype, int) or isinstance(mtype, bool):
        raise FrameRejected(RpcFrameworkError("message type is not a number"), message_id or UNREADABLE_ID)
    if mtype in (CALLRESULT, CALLERROR) or (version == "2.1" and mtype in (CALLRESULTERROR, SEND)):
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
    return Call(message_id, action, payload)


def _parse_other(msg: list[Any], mtype: int, message_id: str | None) -> Message:
    # Never answer a CALLRESULT or CALLERROR with a CALLERROR (R13): malformed ones are ignored.
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
    # Exactly 5 elements; description "" when empty; details always an object (R13).
    return orjson.dumps([CALLERROR, message_id, wire_code(error.code, version), error.description,
                         error.details]).decode()
