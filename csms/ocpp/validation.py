"""Strict validation against the official OCPP JSON schemas, compiled once per schema.

The schemas are the ones shipped in the ``ocpp`` package (78 for 1.6 including the
security whitepaper, 128 for 2.0.1, 181 for 2.1). The package validates every
message with a fresh jsonschema walk in a thread pool (350–840 µs per message, see
``docs``/README); here each schema is compiled once by ``jsonschema-rs`` (Rust, one pass
over the decoded payload: about 1.4 µs for a 10-sample 1.6 MeterValues, against 10–12 µs
for the fastjsonschema-generated Python this replaced). ``format: date-time`` is checked by
:func:`is_date_time` (RFC 3339 §5.6), not jsonschema-rs's own checker, which accepts
non-digits (e.g. ``20/4-05-01T…``). tests/test_validation_differential.py holds the verdict
and the error code of every official schema to the ``jsonschema`` package's. The steady 1.6 CALLs
reach this only when the one-pass typed decode (csms/ocpp/typed_calls.py) does not accept them.

Schema failures map onto the OCPP error codes (2.0.1 Part 4 §4.3; the mapping the
reference recommends, not the ``ocpp`` package's, which swaps several):
``additionalProperties`` → FormatViolation, ``required``/``minItems``/``maxItems`` →
OccurrenceConstraintViolation, ``type`` → TypeConstraintViolation, anything about a
value (enum, length, range, format, pattern) → PropertyConstraintViolation.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs

from csms.ocpp.errors import (
    FormatViolation,
    OccurrenceConstraintViolation,
    OcppError,
    PropertyConstraintViolation,
    TypeConstraintViolation,
)

Validator = Callable[[Any], Any]

_INT64_LIMIT = 2**63  # orjson reads integers up to u64; larger ones become floats

_PACKAGE_DIR = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}

_RULE_TO_ERROR: dict[str, type[OcppError]] = {
    "additionalProperties": FormatViolation,
    "required": OccurrenceConstraintViolation,
    "minItems": OccurrenceConstraintViolation,
    "maxItems": OccurrenceConstraintViolation,
    "type": TypeConstraintViolation,
}


def _schema_dir(version: str) -> Any:
    return resources.files("ocpp") / _PACKAGE_DIR[version] / "schemas"


def schema_file_name(version: str, action: str, *, response: bool) -> str:
    if version == "1.6":
        return f"{action}Response.json" if response else f"{action}.json"
    return f"{action}Response.json" if response else f"{action}Request.json"


@cache
def known_actions(version: str) -> frozenset[str]:
    """Every action that has a schema in this version (either direction)."""
    names = set()
    for entry in _schema_dir(version).iterdir():
        name = entry.name
        if not name.endswith(".json") or name.endswith("Response.json"):
            continue
        action = name.removesuffix(".json")
        if version != "1.6":
            action = action.removesuffix("Request")
        names.add(action)
    return frozenset(names)


@cache
def load_schema(version: str, action: str, response: bool) -> dict[str, Any]:
    path = _schema_dir(version) / schema_file_name(version, action, response=response)
    if not response and not path.is_file():
        # 2.1 SEND messages have no response, and their schema no "Request" suffix
        # (NotifyPeriodicEventStream.json; 2.1 Part 4 §4.2.4).
        path = _schema_dir(version) / f"{action}.json"
    # Some shipped schema files start with a UTF-8 byte-order mark.
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8-sig"))
    return schema


# RFC 3339 §5.6 date-time (full-date "T" full-time); "T" and "Z" may be lower case (§5.6 NOTE);
# no leap second, no year 0000 (the jsonschema package's checker, rfc3339-validator, agrees).
_DATE_TIME = re.compile(r"(\d{4})-(0[1-9]|1[0-2])-(\d\d)[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
                        r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII)


def is_date_time(value: str) -> bool:
    """``format: date-time`` (RFC 3339 §5.6), with the day checked against its month."""
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return False
    year, month, day = match.groups()
    if day <= "28":  # two digits: compared as text, no int() on the path every steady CALL takes (issue 15)
        return day != "00" and year != "0000"
    return year != "0000" and int(day) <= calendar.monthrange(int(year), int(month))[1]


@cache
def compiled(version: str, action: str, response: bool) -> Validator:
    """The compiled validator of one schema (compiled on first use, then cached); it raises
    ``jsonschema_rs.ValidationError`` (see :func:`schema_error`)."""
    validator = jsonschema_rs.validator_for(load_schema(version, action, response), validate_formats=True,
                                            formats={"date-time": is_date_time})
    check: Validator = validator.validate
    return check


def _field(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "payload"


def _names(names: Any) -> str:
    """Property names a charger chose, bounded (never the frame itself)."""
    return ", ".join(repr(str(n)[:40]) for n in list(names)[:3])


def _message(rule: str, params: dict[str, Any]) -> str:
    if rule == "type":
        return f"must be {' or '.join(params.get('types', ()))}"
    if rule == "required":
        return f"must contain {params.get('property')!r}"
    if rule == "additionalProperties":
        return f"must not contain {_names(params.get('unexpected', ())) or 'any other property'}"
    if rule == "enum":
        return "must be one of the values the schema enumerates"
    if rule in ("maxLength", "minLength", "maxItems", "minItems", "maximum", "minimum"):
        return f"violates {rule} {params.get('limit')}"
    if rule == "format":
        return f"must be a valid {params.get('format')}"
    if rule == "multipleOf":
        return f"must be a multiple of {params.get('multiple_of')}"
    return f"violates {rule}"


def schema_error(exc: jsonschema_rs.ValidationError) -> OcppError:
    """The OCPP error for a schema failure, naming the field but never echoing the frame."""
    rule = exc.kind.name  # the schema keyword, e.g. "additionalProperties"
    if rule == "falseSchema" and exc.schema_path[-1:] == ["additionalProperties"]:
        rule = "additionalProperties"  # an object schema with no properties at all, e.g. 1.6 LogStatusNotification.conf
    cls = _RULE_TO_ERROR.get(rule, PropertyConstraintViolation)
    field = _field(exc.instance_path)
    params = exc.kind.as_dict()
    message = _message(rule, params)
    if rule == "type" and _overflowed_integer(exc.instance, params.get("types")):
        # A JSON integer beyond 64 bits (e.g. connectorId 10^23) is read as a float, which the
        # draft-04 (1.6) schemas call the wrong type; it is an integer out of range (R56, §1.3).
        cls, message = PropertyConstraintViolation, "integer out of range"
    return cls(f"{field}: {message}"[:255], {"field": field, "rule": rule})


def _overflowed_integer(value: Any, expected: Any) -> bool:
    """True for an integral float too large for the int orjson would have made of it."""
    wants_integer = expected == "integer" or (isinstance(expected, list) and "integer" in expected)
    return (wants_integer and isinstance(value, float) and math.isfinite(value) and value.is_integer()
            and abs(value) >= _INT64_LIMIT)


def validate(version: str, action: str, payload: dict[str, Any], *, response: bool = False) -> None:
    """Raise the OCPP error that describes how ``payload`` fails its schema."""
    try:
        compiled(version, action, response)(payload)
    except jsonschema_rs.ValidationError as exc:
        raise schema_error(exc) from None
    except ValueError:  # a Python value that is not JSON (only our own outgoing payloads can hold one)
        raise TypeConstraintViolation("payload: holds a value that is not JSON", {"field": "payload",
                                                                                   "rule": "type"}) from None
