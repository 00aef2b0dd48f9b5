"""Strict validation against the official OCPP JSON schemas, compiled once per schema.

The schemas are the ones shipped in the ``ocpp`` package (78 for 1.6 including the
security whitepaper, 128 for 2.0.1, 181 for 2.1). The package validates every
message with a fresh jsonschema walk in a thread pool (350–840 µs per message, see
``docs``/README); here each schema is compiled once with fastjsonschema into a
Python function (10–30 µs), with ``format: date-time`` checked. The generated code is
post-processed once so that string enums are set look-ups (same meaning, see
``_fast_enums``).

Schema failures map onto the OCPP error codes (2.0.1 Part 4 §4.3; the mapping the
reference recommends, not the ``ocpp`` package's, which swaps several):
``additionalProperties`` → FormatViolation, ``required``/``minItems``/``maxItems`` →
OccurrenceConstraintViolation, ``type`` → TypeConstraintViolation, anything about a
value (enum, length, range, format, pattern) → PropertyConstraintViolation.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

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


# fastjsonschema writes a string enum as ``isinstance(v, str) and v == 'A' or isinstance(v, str)
# and v == 'B' or …``: with the 22 measurands of 1.6 that is most of the cost of a MeterValues
# validation. Such a condition (all members strings) means exactly ``v in {'A', 'B', …}``.
_ENUM_LINE = re.compile(r"^(?P<indent>\s*)if not \((?P<cond>isinstance\((?P<var>\w+), str\) and .*)\):$")
_ENUM_TERM = re.compile(r"isinstance\((\w+), str\) and (\w+) == ('(?:[^'\\]|\\.)*')$")


def _fast_enums(code: str, constants: dict[str, frozenset[str]]) -> str:
    out: list[str] = []
    for line in code.splitlines():
        match = _ENUM_LINE.match(line)
        if match:
            var = match.group("var")
            members: list[str] = []
            for term in match.group("cond").split(" or "):
                t = _ENUM_TERM.match(term)
                if t is None or t.group(1) != var or t.group(2) != var:
                    members = []
                    break
                members.append(ast.literal_eval(t.group(3)))
            if members:
                name = f"_ENUM_{len(constants)}"
                constants[name] = frozenset(members)
                out.append(f"{match.group('indent')}if not (isinstance({var}, str) and {var} in {name}):")
                continue
        out.append(line)
    return "\n".join(out) + "\n"


@cache
def compiled(version: str, action: str, response: bool) -> Validator:
    """The compiled validator of one schema (compiled on first use, then cached)."""
    # What fastjsonschema.compile() does (same arguments), with the enum rewrite in between;
    # _factory is internal to fastjsonschema, so its version is pinned in pyproject.toml.
    resolver, generator = fastjsonschema._factory(load_schema(version, action, response), {}, {}, True, True,
                                                  True, True)
    namespace: dict[str, Any] = dict(generator.global_state)
    code = _fast_enums(generator.func_code, namespace)
    exec(compile(code, f"<ocpp {version} {action}{'Response' if response else ''} schema>", "exec"),  # noqa: S102
         namespace)
    validator: Validator = namespace[resolver.get_scope_name()]
    return validator


def schema_error(exc: fastjsonschema.JsonSchemaValueException) -> OcppError:
    """The OCPP error for a schema failure, naming the field but never echoing the frame."""
    cls = _RULE_TO_ERROR.get(exc.rule or "", PropertyConstraintViolation)
    field = (exc.name or "data").removeprefix("data").lstrip(".") or "payload"
    message = exc.message.removeprefix(exc.name or "").strip()
    if exc.rule == "type" and _overflowed_integer(exc.value, exc.rule_definition):
        # A JSON integer beyond 64 bits (e.g. connectorId 10^23) is read as a float, which the
        # draft-04 (1.6) schemas call the wrong type; it is an integer out of range (R56, §1.3).
        cls, message = PropertyConstraintViolation, "integer out of range"
    return cls(f"{field}: {message}"[:255], {"field": field, "rule": exc.rule or ""})


def _overflowed_integer(value: Any, expected: Any) -> bool:
    """True for an integral float too large for the int orjson would have made of it."""
    wants_integer = expected == "integer" or (isinstance(expected, list) and "integer" in expected)
    return (wants_integer and isinstance(value, float) and math.isfinite(value) and value.is_integer()
            and abs(value) >= _INT64_LIMIT)


def validate(version: str, action: str, payload: dict[str, Any], *, response: bool = False) -> None:
    """Raise the OCPP error that describes how ``payload`` fails its schema."""
    try:
        compiled(version, action, response)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise schema_error(exc) from None
