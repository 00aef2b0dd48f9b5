"""The steady 1.6 CALLs decoded and checked against their schema in one msgspec pass (issue 15).

The general path reads a frame with orjson, checks the framing (csms/ocpp/framing.py), bounds the
nesting, then validates the payload with jsonschema-rs (csms/ocpp/validation.py): for a 10-sample
MeterValues about 12 µs. Here one msgspec decode into the generated Structs (csms/ocpp/typed_v16.py)
checks the frame's shape, the message id, the action and the payload's schema together, in C.

The fast path only ever says yes: a frame it accepts is a CALL the general path would accept with the
same message id, action and payload (the payload handed on is the same dict orjson would have made,
and it is known to satisfy the schema). Anything else — an action without Structs, a binary frame, a
frame the Structs refuse for any reason — returns None and goes the general path, which chooses the
CALLERROR and words it; so the answer to a bad frame is the general path's, always.
tests/test_typed_calls.py holds both paths to the same verdict and payload over every generated
valid and invalid case of these schemas (tests/test_validation_differential.py) and over the
hostile-frame corpus.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from csms.ocpp.framing import MESSAGE_ID_MAX_CHARS, Call
from csms.ocpp.typed_v16 import DATE_TIMES, REQUESTS
from csms.ocpp.validation import is_date_time

MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=MESSAGE_ID_MAX_CHARS)]

# The action of a CALL, read before the frame is decoded so that the decoder of its Structs can be
# chosen: ``[2, "<id>", "<Action>"`` at the start (the id's characters need no escape in practice;
# one that has any goes the general path).
_ACTION = re.compile(r'\s*\[\s*2\s*,\s*"[^"\\]{1,' + str(MESSAGE_ID_MAX_CHARS) + r'}"\s*,\s*"([A-Za-z]{1,64})"')


def _frame_decoder(action: str, payload: type[msgspec.Struct]) -> msgspec.json.Decoder[Any]:
    # A CALL of this action: exactly [2, id, action, payload] (1.6J §4.2.1).
    frame: Any = tuple[Literal[2], MessageId, Literal[action], payload]  # type: ignore[valid-type]
    return msgspec.json.Decoder(frame)


def _date_time_check(path: tuple[str, ...]) -> Callable[[Any], bool]:
    """True when every date-time at ``path`` of a payload is one (absent optional fields are fine).

    Plain loops, no generator or ``map`` per level: this runs for every steady CALL (issue 15)."""
    if not path:
        return is_date_time
    head, inner = path[0], _date_time_check(path[1:])
    if head == "*":
        def each(items: list[Any]) -> bool:
            for item in items:  # noqa: SIM110 (all() over a generator costs more here: see the docstring)
                if not inner(item):
                    return False
            return True
        return each

    def field(obj: dict[str, Any]) -> bool:
        return head not in obj or inner(obj[head])
    return field


def _checks(paths: tuple[tuple[str, ...], ...]) -> Callable[[Any], bool]:
    each = tuple(_date_time_check(p) for p in paths)
    if len(each) == 1:
        return each[0]

    def every(payload: dict[str, Any]) -> bool:
        for check in each:  # noqa: SIM110 (as above)
            if not check(payload):
                return False
        return True
    return every


_DECODERS = {"1.6": {action: (_frame_decoder(action, struct), _checks(DATE_TIMES[action]))
                     for action, struct in REQUESTS.items()}}


def typed_call(raw: str | bytes, version: str) -> Call | None:
    """The CALL in ``raw`` with its payload checked against the official schema, or None when the
    general path must read the frame (see the module's docstring)."""
    decoders = _DECODERS.get(version)
    if decoders is None or not isinstance(raw, str):
        return None
    match = _ACTION.match(raw)
    found = decoders.get(match.group(1)) if match is not None else None
    if found is None:
        return None
    decoder, date_times_valid = found
    try:
        _, message_id, action, struct = decoder.decode(raw)
    except msgspec.DecodeError:  # ValidationError is one
        return None
    payload: dict[str, Any] = msgspec.to_builtins(struct)  # the dict orjson makes of the same text
    if not date_times_valid(payload):
        return None
    return Call(message_id, action, payload, schema_checked=True)
