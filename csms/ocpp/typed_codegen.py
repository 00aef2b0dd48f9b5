"""Generate csms/ocpp/typed_v16.py: msgspec Structs for the steady 1.6 CALLs, from the official schemas.

usage::

    python -m csms.ocpp.typed_codegen           print the module
    python -m csms.ocpp.typed_codegen --write   write csms/ocpp/typed_v16.py
    python -m csms.ocpp.typed_codegen --check   exit 1 when the file is not what the schemas give

The Structs let msgspec decode a frame and check its payload in one pass in C (csms/ocpp/typed_calls.py,
issue 15). They must refuse everything the official schema refuses, so only the keywords below are
translated, each exactly; a schema using any other keyword (or an object that admits unknown properties,
which a Struct would silently drop) is refused here, never approximated:

* ``type`` object (``properties``, ``required``, ``additionalProperties: false``), array (``items``,
  ``minItems``, ``maxItems``), string (``maxLength``, ``minLength``, ``enum``, ``format: date-time``),
  integer (``minimum``, ``maximum``), boolean;
* ``format: date-time`` is not a msgspec constraint: its paths are listed (``DATE_TIMES``) and checked by
  ``csms.ocpp.validation.is_date_time``, the general path's checker;
* a JSON integer beyond what orjson reads as an integer (−2⁶³ … 2⁶⁴−1) is a float to the general path
  (``integer out of range``), and msgspec would read it exactly: integers are bounded to int64 (msgspec's
  limit for bounds), so such a frame, and one with an integer from 2⁶³ on, goes the general path;
* ``additionalProperties: false`` written on a string (1.6's enums carry it) means nothing and is ignored.
"""

from __future__ import annotations

import keyword
import sys
from pathlib import Path
from typing import Any

from csms.common.generated import generated_file_main
from csms.ocpp.validation import load_schema

# The CALLs a 1.6 charger sends in steady operation; MeterValues is most of the traffic.
ACTIONS_16 = ("Authorize", "BootNotification", "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification",
              "StopTransaction")
TARGET = Path(__file__).with_name("typed_v16.py")
# msgspec bounds must fit in an int64: integers from 2⁶³ to 2⁶⁴−1 (orjson's too) go the general path.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_IGNORED = frozenset({"$schema", "title", "description", "id", "javaType"})
_KEYWORDS = {
    "object": frozenset({"type", "properties", "required", "additionalProperties"}),
    "array": frozenset({"type", "items", "minItems", "maxItems"}),
    "string": frozenset({"type", "maxLength", "minLength", "enum", "format", "additionalProperties"}),
    "integer": frozenset({"type", "minimum", "maximum", "additionalProperties"}),
    "boolean": frozenset({"type", "additionalProperties"}),
}


class UnsupportedSchema(ValueError):
    """The schema uses something the typed decoders cannot express exactly."""


def _meta(**bounds: int | None) -> str:
    given = [f"{k}={v}" for k, v in bounds.items() if v is not None]
    return f"msgspec.Meta({', '.join(given)})" if given else ""


def _annotated(base: str, meta: str) -> str:
    return f"Annotated[{base}, {meta}]" if meta else base


class _Generator:
    def __init__(self) -> None:
        self.classes: list[str] = []
        self.date_times: list[tuple[str, ...]] = []

    def type_of(self, schema: dict[str, Any], name: str, path: tuple[str, ...]) -> str:
        kind = schema.get("type")
        if not isinstance(kind, str) or kind not in _KEYWORDS:
            raise UnsupportedSchema(f"{'/'.join(path) or 'payload'}: type {kind!r}")
        unknown = set(schema) - _KEYWORDS[kind] - _IGNORED
        if unknown:
            raise UnsupportedSchema(f"{'/'.join(path) or 'payload'}: {sorted(unknown)}")
        if kind == "object":
            return self.struct(schema, name, path)
        if kind == "array":
            if not isinstance(schema.get("items"), dict):  # absent (any items) or a tuple of schemas
                raise UnsupportedSchema(f"{'/'.join(path)}: items is not one schema")
            item = self.type_of(schema["items"], name, (*path, "*"))
            return _annotated(f"list[{item}]", _meta(min_length=schema.get("minItems"),
                                                     max_length=schema.get("maxItems")))
        if kind == "string":
            if schema.get("format", "date-time") != "date-time":
                raise UnsupportedSchema(f"{'/'.join(path)}: format {schema['format']!r}")
            if "format" in schema:
                self.date_times.append(path)
            if "enum" in schema:
                if not all(isinstance(v, str) for v in schema["enum"]) or {"maxLength", "minLength"} & set(schema):
                    raise UnsupportedSchema(f"{'/'.join(path)}: enum with other constraints")
                # An alias, one value a line: the enums are long (22 measurands).
                values = "".join(f"    {v!r},\n" for v in schema["enum"])
                self.classes.append(f"{name} = Literal[\n{values}]\n")
                return name
            return _annotated("str", _meta(min_length=schema.get("minLength"), max_length=schema.get("maxLength")))
        if kind == "integer":
            if not all(type(schema.get(k, 0)) is int for k in ("minimum", "maximum")):
                raise UnsupportedSchema(f"{'/'.join(path)}: a bound that is not an integer")
            low = max(schema.get("minimum", INT_MIN), INT_MIN)
            high = min(schema.get("maximum", INT_MAX), INT_MAX)
            if (low, high) == (INT_MIN, INT_MAX):
                return "JsonInt"
            return _annotated("int", _meta(ge=low, le=high))
        return "bool"

    def struct(self, schema: dict[str, Any], name: str, path: tuple[str, ...]) -> str:
        if schema.get("additionalProperties") is not False:
            raise UnsupportedSchema(f"{'/'.join(path) or 'payload'}: admits unknown properties")
        required = schema.get("required", [])
        properties: dict[str, Any] = schema.get("properties", {})
        if set(required) - set(properties):
            raise UnsupportedSchema(f"{'/'.join(path) or 'payload'}: requires a property it does not define")
        lines = []
        # Required fields first: a Struct's fields with defaults must follow those without.
        for prop in sorted(properties, key=lambda p: p not in required):
            sub = properties[prop]
            child = name + prop[:1].upper() + prop[1:]
            typ = self.type_of(sub, child, (*path, prop))
            attr = prop if prop.isidentifier() and not keyword.iskeyword(prop) else None
            if attr is None:
                raise UnsupportedSchema(f"{'/'.join((*path, prop))}: not a Python name")
            lines.append(f"    {attr}: {typ}" if prop in required else
                         f"    {attr}: {typ} | msgspec.UnsetType = msgspec.UNSET")
        body = "\n".join(lines) or "    pass"
        self.classes.append(f"class {name}(msgspec.Struct, forbid_unknown_fields=True, frozen=True):\n{body}\n")
        return name


HEADER = '''"""GENERATED by `python -m csms.ocpp.typed_codegen --write` from the ocpp package's 1.6 schemas;
do not edit.

msgspec Structs of the steady 1.6 CALL payloads (csms/ocpp/typed_calls.py); the rules of the
translation are in csms/ocpp/typed_codegen.py.
"""

from typing import Annotated, Literal

import msgspec

# A JSON integer within int64 (orjson reads larger ones as floats; see csms/ocpp/typed_codegen.py).
JsonInt = Annotated[int, msgspec.Meta(ge=INT_MIN, le=INT_MAX)]
'''.replace("INT_MIN", str(INT_MIN)).replace("INT_MAX", str(INT_MAX))


def generate() -> str:
    """The module's text for ``ACTIONS_16``."""
    out = [HEADER]
    requests, date_times = [], []
    for action in ACTIONS_16:
        gen = _Generator()
        name = gen.type_of(load_schema("1.6", action, False), f"{action}Request", ())
        out.extend(f"\n{c}\n" for c in gen.classes)
        requests.append(f"    {action!r}: {name},")
        date_times.append(f"    {action!r}: {tuple(gen.date_times)!r},")
    out.append("\nREQUESTS: dict[str, type[msgspec.Struct]] = {\n" + "\n".join(requests) + "\n}\n")
    out.append("\n# Paths of the ``format: date-time`` strings of each payload (\"*\": every item of an array).\n")
    out.append("DATE_TIMES: dict[str, tuple[tuple[str, ...], ...]] = {\n" + "\n".join(date_times) + "\n}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    return generated_file_main(argv, prog="python -m csms.ocpp.typed_codegen",
                               description=__doc__.split("\n")[0] if __doc__ else None, target=TARGET,
                               generate=generate)


if __name__ == "__main__":
    sys.exit(main())
