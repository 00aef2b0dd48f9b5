"""Differential test: csms.ocpp.validation (jsonschema-rs) against the ``jsonschema`` package, over every
official schema of 1.6, 2.0.1 and 2.1, requests and responses (R11 [2.0.1/2.1 Part 4 §4.1.7], §1.3).

For each schema: valid examples generated from it (required fields only, every field, a random mix), then
invalid ones made from the full example at every place the schema constrains (missing required, wrong type,
enum, maxLength, minimum/maximum, additionalProperties, minItems/maxItems, nested array items, integer vs
number, multipleOf, format date-time and uri), plus the payloads of the hostile-frame corpus
(tests/test_ocpp_hostile.py) and deep ones at the framing bound (csms.ocpp.framing.MAX_JSON_DEPTH). The
verdict must be the reference's on every case, the error class one of the codes the reference's errors map
to (the only one when there is one error, with the same keyword and field).

The reference is ``jsonschema`` (the draft named by ``$schema``: 04 or 06) with its format checkers, and
three documented choices where the schemas' meaning is not the package's arithmetic or checker:
* ``multipleOf`` (1.6 charging limits, ``multipleOf: 0.1``) is read on the decimal the JSON text holds:
  jsonschema divides floats, so it calls 16.1 A no multiple of 0.1 (161.00000000000003);
* ``date-time`` is rfc3339-validator (the checker jsonschema uses), with the lower-case "t"/"z" RFC 3339
  §5.6 NOTE allows, and without its ``$`` accepting a trailing newline;
* ``uri`` is rfc3986-validator (jsonschema's non-GPL uri checker), rule URI.
Bounded: a fixed seed, at most ``PER_KIND`` invalid cases per kind of mutation and schema.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
import rfc3339_validator  # type: ignore[import-untyped]
import rfc3986_validator  # type: ignore[import-untyped]

from csms.ocpp.errors import (
    SPEC_ERROR_CODES,
    FormatViolation,
    OccurrenceConstraintViolation,
    OcppError,
    PropertyConstraintViolation,
    TypeConstraintViolation,
    wire_code,
)
from csms.ocpp.framing import MAX_JSON_DEPTH
from csms.ocpp.validation import is_date_time, known_actions, load_schema, validate
from tests.test_ocpp_hostile import CASES_201

VERSIONS = ("1.6", "2.0.1", "2.1")
SEND_ONLY = {"2.1": frozenset({"NotifyPeriodicEventStream"})}  # 2.1 Part 4 §4.2.4: no response schema
PER_KIND = 6
_INT64 = 2**63

# --- the reference ----------------------------------------------------------------------------------------


def _reference_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return not value.endswith("\n") and bool(rfc3339_validator.validate_rfc3339(value.upper()))


def _reference_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(rfc3986_validator.validate_rfc3986(value, rule="URI"))


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(_reference_date_time)
_FORMATS.checks("uri")(_reference_uri)


def _decimal_multiple_of(validator: Any, multiple: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "number"):
        return
    if isinstance(instance, float) and not math.isfinite(instance):
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {multiple}")
        return
    quotient = Fraction(Decimal(repr(instance))) / Fraction(Decimal(repr(multiple)))
    if quotient.denominator != 1:
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {multiple}")


_REFERENCES: dict[tuple[str, str, bool], Any] = {}


def reference(version: str, action: str, response: bool) -> Any:
    key = (version, action, response)
    if key not in _REFERENCES:
        schema = load_schema(version, action, response)
        base = jsonschema.validators.validator_for(schema)
        assert base in (jsonschema.Draft4Validator, jsonschema.Draft6Validator)
        cls = jsonschema.validators.extend(base, {"multipleOf": _decimal_multiple_of})
        _REFERENCES[key] = cls(schema, format_checker=_FORMATS)
    return _REFERENCES[key]


def reference_class(error: Any) -> type[OcppError]:
    """The OCPP error a reference error maps to (ocpp-requirements §1.3 table; R56 for huge integers)."""
    rule = error.validator
    if rule == "additionalProperties":
        return FormatViolation
    if rule in ("required", "minItems", "maxItems"):
        return OccurrenceConstraintViolation
    if rule == "type":
        value = error.instance
        if (isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) >= _INT64
                and "integer" in (error.validator_value if isinstance(error.validator_value, list)
                                  else [error.validator_value])):
            return PropertyConstraintViolation
        return TypeConstraintViolation
    return PropertyConstraintViolation


def field_name(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "payload"


def compare(version: str, action: str, response: bool, payload: Any, label: str,
            errors: list[Any] | None = None) -> str | None:
    """None when the chosen validator and the reference agree, else what differs."""
    if errors is None:
        errors = list(reference(version, action, response).iter_errors(payload))
    try:
        validate(version, action, payload, response=response)
        got: OcppError | None = None
    except OcppError as exc:
        got = exc
    where = f"{version} {action}{'Response' if response else ''} [{label}] {orjson.dumps(payload)[:300]!r}"
    if got is None:
        return None if not errors else f"{where}: accepted, reference says {[e.message[:80] for e in errors]}"
    if not errors:
        return f"{where}: rejected ({got.code} {got.description}), reference accepts"
    classes = {reference_class(e) for e in errors}
    if type(got) not in classes:
        return f"{where}: {got.code}, reference's errors map to {sorted(c.code for c in classes)}"
    if wire_code(got.code, version) not in SPEC_ERROR_CODES[version] | {"FormationViolation",
                                                                        "OccurenceConstraintViolation"}:
        return f"{where}: {got.code} is not a {version} code"
    if len(errors) == 1:
        (only,) = errors
        if got.details.get("rule") != only.validator or got.details.get("field") != field_name(only.absolute_path):
            return f"{where}: {got.details} vs reference {only.validator} at {field_name(only.absolute_path)}"
    return None


# --- examples generated from a schema -----------------------------------------------------------------------

VALID_TIMES = ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123+02:00", "2024-02-29T23:59:59.999999999-05:30",
               "2024-05-01t12:00:00z"]
TIME_VARIANTS = [
    *VALID_TIMES,
    "2024-05-01T12:00:00", "2024-05-01 12:00:00Z", "2024-13-01T12:00:00Z", "2023-02-29T12:00:00Z",
    "2024-04-31T12:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T23:59:60Z", "2024-05-01T12:00:00+0200",
    "2024-05-01T12:00:00+24:00", "2024-05-01T12:00Z", "0000-01-01T00:00:00Z", "20/4-05-01T12:00:00Z",
    "2024-05-01T12:00:00Z\n", "2024-05-01T12:00:00.Z", "２024-05-01T12:00:00Z", "", "2024-05-01",
    "9999-12-31T23:59:59+23:59", "2024-05-01T1-:00:00Z"]
URI_VARIANTS = ["http://example.com/firmware.bin", "ftp://u:p@host:21/a?b#c", "urn:isbn:0451450523", "x:y",
                "/relative/path", "not a uri", "http://a b", "", "1http://x", "http://[::1]/", "http://x/%zz"]


class Gen:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root, self.rng = root, rng

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            ref = schema["$ref"]
            assert ref.startswith("#/definitions/"), ref
            schema = self.root["definitions"][ref.removeprefix("#/definitions/")]
        return schema

    def value(self, schema: dict[str, Any], mode: str, depth: int = 0) -> Any:
        schema = self.resolve(schema)
        kind = schema.get("type")
        rng = self.rng
        if "enum" in schema:
            return schema["enum"][0] if mode == "min" else rng.choice(schema["enum"])
        if kind == "object":
            out: dict[str, Any] = {}
            required = set(schema.get("required", ()))
            for name, sub in schema.get("properties", {}).items():
                wanted = name in required or (depth < 10 and (mode == "full" or (mode == "random"
                                                                                 and rng.random() < 0.5)))
                if wanted:
                    out[name] = self.value(sub, mode, depth + 1)
            return out
        if kind == "array":
            low = schema.get("minItems", 0)
            high = min(schema.get("maxItems", 3), 3)
            n = max(low, 1 if mode == "min" else (2 if mode == "full" else rng.randint(low, max(low, high))))
            n = min(n, schema.get("maxItems", n))
            return [self.value(schema.get("items", {}), mode, depth + 1) for _ in range(n)]
        if kind == "string":
            if schema.get("format") == "date-time":
                return rng.choice(VALID_TIMES)
            if schema.get("format") == "uri":
                return "http://example.com/x"
            limit = schema.get("maxLength", 12)
            if mode == "full":
                return ("é😀" * limit)[:limit]  # code points, not bytes or UTF-16 units, count
            return "".join(rng.choice("abcXYZ09 -_") for _ in range(1 if mode == "min" else rng.randint(1, limit)))
        if kind in ("integer", "number"):
            low = schema.get("minimum", -5 if mode == "random" else 0)
            high = schema.get("maximum", low + 1000)
            if kind == "integer":
                return rng.randint(math.ceil(low), math.floor(high))
            if "multipleOf" in schema:
                return float(Decimal(rng.randint(math.ceil(low * 10), math.floor(high * 10))) / 10)
            return round(rng.uniform(low, high), rng.randint(0, 3))
        if kind == "boolean":
            return rng.random() < 0.5
        return {}  # a schema with no type (none in the official files)

    def sites(self, value: Any, schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[
            tuple[tuple[Any, ...], dict[str, Any]]]:
        schema = self.resolve(schema)
        yield path, schema
        if isinstance(value, dict):
            for name, sub in schema.get("properties", {}).items():
                if name in value:
                    yield from self.sites(value[name], sub, (*path, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from self.sites(item, schema.get("items", {}), (*path, i))


WRONG_TYPE: dict[str, list[Any]] = {
    "string": [7, None, ["x"]], "integer": ["1", 1.5, True, None, {}], "number": ["1.5", True, None],
    "boolean": ["true", 0, None], "object": [[], "x", None], "array": [{}, "x", None],
}


def mutations(schema: dict[str, Any], value: Any, rng: random.Random) -> Iterator[tuple[str, Any]]:
    """(kind, replacement) for one place; the replacement ``_DELETE:<name>`` deletes a property."""
    kind = schema.get("type")
    for wrong in WRONG_TYPE.get(kind or "", []):
        yield "type", wrong
    if kind == "object" and isinstance(value, dict):
        for name in schema.get("required", ()):
            yield "required", f"_DELETE:{name}"
        yield "additionalProperties", {**value, "unexpected_" + "x" * rng.randint(1, 300): 1}
    if "enum" in schema:
        member = schema["enum"][0]
        yield "enum", member.lower() if member.lower() != member else member.upper()
        yield "enum", member + " "
        yield "enum", "NotAMember"
    if "maxLength" in schema:
        limit = schema["maxLength"]
        yield "maxLength", "a" * (limit + 1)
        yield "maxLength", "😀" * limit
        yield "maxLength", "😀" * (limit + 1)
    if kind in ("integer", "number"):
        if "minimum" in schema:
            yield "minimum", schema["minimum"] - 1
            yield "minimum", schema["minimum"]
        if "maximum" in schema:
            yield "maximum", schema["maximum"] + 1
            yield "maximum", schema["maximum"]
        yield "integer", 1.0
        yield "integer", 1e23
        yield "integer", -(2**63)
        yield "integer", 2**64 - 1
        yield "integer", 3
    if "multipleOf" in schema:
        for number in (0.3, 16.1, 22.2, 0.15, 7, 1e-9, 0.30000000000000004, 230.4, 1e20):
            yield "multipleOf", number
    if kind == "array" and isinstance(value, list):
        if schema.get("minItems"):
            yield "minItems", []
        if schema.get("maxItems", 100) <= 20:
            yield "maxItems", (value * (schema["maxItems"] + 1))[:schema["maxItems"] + 1] if value else value
    if schema.get("format") == "date-time":
        for text in TIME_VARIANTS:
            yield "date-time", text
    if schema.get("format") == "uri":
        for text in URI_VARIANTS:
            yield "uri", text


def mutated(full: Any, path: tuple[Any, ...], replacement: Any) -> Any:
    copy = orjson.loads(orjson.dumps(full))
    if isinstance(replacement, str) and replacement.startswith("_DELETE:"):
        target = copy
        for part in path:
            target = target[part]
        del target[replacement.removeprefix("_DELETE:")]
        return copy
    if not path:
        return replacement
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = replacement
    return copy


def cases(version: str, action: str, response: bool) -> Iterator[tuple[str, Any]]:
    schema = load_schema(version, action, response)
    rng = random.Random(f"{version}/{action}/{response}")
    gen = Gen(schema, rng)
    for mode in ("min", "full", "random", "random"):
        yield f"valid {mode}", gen.value(schema, mode)
    full = gen.value(schema, "full")
    by_kind: dict[str, list[tuple[tuple[Any, ...], Any]]] = {}
    for path, sub in gen.sites(full, schema):
        value: Any = full
        for part in path:
            value = value[part]
        for kind, replacement in mutations(sub, value, rng):
            by_kind.setdefault(kind, []).append((path, replacement))
    for kind, kind_cases in by_kind.items():
        for path, replacement in rng.sample(kind_cases, min(PER_KIND, len(kind_cases))):
            yield f"{kind} at {field_name(path)}", mutated(full, path, replacement)


def schemas(version: str, response: bool) -> list[str]:
    return sorted(a for a in known_actions(version) if not (response and a in SEND_ONLY.get(version, ())))


@pytest.mark.parametrize("response", [False, True], ids=["requests", "responses"])
@pytest.mark.parametrize("version", VERSIONS)
def test_verdict_and_error_code_agree_with_the_reference_on_every_schema(version: str, response: bool) -> None:
    mismatches: list[str] = []
    counts = {"valid": 0, "invalid": 0}
    for action in schemas(version, response):
        check = reference(version, action, response)
        for label, payload in cases(version, action, response):
            errors = list(check.iter_errors(payload))
            # The generator's own check: its valid examples are valid for the reference.
            assert not (errors and label.startswith("valid")), (action, label, payload)
            counts["invalid" if errors else "valid"] += 1
            problem = compare(version, action, response, payload, label, errors)
            if problem:
                mismatches.append(problem)
    assert not mismatches, f"{len(mismatches)} disagreements, e.g.:\n" + "\n".join(mismatches[:15])
    assert counts["invalid"] > 3 * len(schemas(version, response))  # the mutations really do break schemas
    assert counts["valid"] >= 4 * len(schemas(version, response))


def _hostile_payloads() -> Iterator[tuple[str, str, Any]]:
    """(label, action, payload) of every CALL in the hostile-frame corpus that gets as far as its schema."""
    for name, frame, _, _ in CASES_201:
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            continue
        if isinstance(message, list) and len(message) == 4 and message[0] == 2 and isinstance(message[2], str):
            yield name, message[2], message[3]
    deep: Any = 7
    for _ in range(MAX_JSON_DEPTH - 2):
        deep = [deep]
    yield "data at the depth bound", "DataTransfer", {"vendorId": "V", "data": deep}
    yield "deep customData", "Heartbeat", {"customData": {"vendorId": "V", "x": deep}}
    yield "deep wrong data", "DataTransfer", {"vendorId": deep}


@pytest.mark.parametrize("version", VERSIONS)
def test_hostile_corpus_payloads_agree_with_the_reference(version: str) -> None:
    mismatches = []
    checked = 0
    for label, action, payload in _hostile_payloads():
        if action not in known_actions(version) or not isinstance(payload, dict):
            continue
        checked += 1
        problem = compare(version, action, False, payload, label)
        if problem:
            mismatches.append(problem)
    assert not mismatches, "\n".join(mismatches)
    assert checked >= 8


def test_the_reference_has_the_format_checkers_it_needs() -> None:
    # Without these the reference would accept any string for date-time and uri (formats are optional).
    assert not _reference_date_time("2024-05-01T12:00:00")
    assert _reference_date_time("2024-05-01t12:00:00z")
    assert not _reference_uri("not a uri")
    assert not reference("1.6", "StartTransaction", False).is_valid(
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "20/4-05-01T12:00:00Z"})


def test_the_date_time_checker_agrees_with_the_reference_on_every_day_of_the_calendar() -> None:
    # Every day 00–32 of every month of years with and without 29 February (1900 is not a leap
    # year, 2000 is), year 0000 (RFC 3339 has none), and the time and offset spellings: the
    # day-of-month rule is the one part of RFC 3339 §5.6 a regular expression cannot say.
    texts = [f"{year}-{month:02d}-{day:02d}{time}" for year in ("0000", "0001", "1900", "2000", "2023", "2024", "9999")
             for month in range(1, 13) for day in range(33)
             for time in ("T00:00:00Z", "t23:59:59.123z", "T12:00:00+05:30", "T12:00:00")]
    texts += ["2024-13-01T00:00:00Z", "2024-00-10T00:00:00Z", "2024-02-29T24:00:00Z", "2024-02-29T10:60:00Z"]
    disagree = [t for t in texts if is_date_time(t) != _reference_date_time(t)]
    assert not disagree, disagree[:10]
    # Z, z and +05:30 of 2000 and 2024 (leap) and 0001, 1900, 2023, 9999; nothing of year 0000
    assert sum(map(is_date_time, texts)) == 3 * (2 * 366 + 4 * 365)


def test_decimal_multiple_of_is_the_documented_choice() -> None:
    # jsonschema's float division calls 22.2 no multiple of 0.1 (221.99999999999997); the JSON text 22.2 is one.
    plain = jsonschema.Draft4Validator({"type": "number", "multipleOf": 0.1})
    assert not plain.is_valid(22.2)
    profile = load_schema("1.6", "SetChargingProfile", False)
    payload = Gen(profile, random.Random(1)).value(profile, "min")
    period = payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]
    period["limit"] = 22.2
    validate("1.6", "SetChargingProfile", payload)
    period["limit"] = 16.15
    with pytest.raises(PropertyConstraintViolation):
        validate("1.6", "SetChargingProfile", payload)


def test_a_python_value_that_is_not_json_is_a_type_violation() -> None:
    # Only the CSMS's own outgoing payloads can hold one (commands are validated before sending).
    with pytest.raises(TypeConstraintViolation) as info:
        validate("1.6", "ReserveNow", {"connectorId": 1, "expiryDate": object(), "idTag": "T", "reservationId": 1})
    assert info.value.details == {"field": "payload", "rule": "type"}
