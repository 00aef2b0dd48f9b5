"""One type per field across the API (issue 11 item 11), read from the real app's /openapi.json,
and checked on real answers: ``meter_start_wh`` is a number in the live state and in /transactions."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websockets

from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

UTC_TEXT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# The live and registry answers of csms/api/operator.py: each declares its response schema.
TYPED_RESPONSES = [
    ("get", "/api/v1/connections"), ("get", "/api/v1/charge-points"), ("get", "/api/v1/charge-points/{cp_id}/state"),
    ("get", "/api/v1/transactions"), ("post", "/api/v1/charge-points/{cp_id}/admission"),
    ("post", "/api/v1/id-tokens"), ("post", "/api/v1/charge-points/{cp_id}/ocpp/{action}"),
    ("post", "/api/v1/charge-points/{cp_id}/remote-start"), ("post", "/api/v1/charge-points/{cp_id}/remote-stop"),
    ("post", "/api/v1/charge-points/{cp_id}/reset"), ("post", "/api/v1/charge-points/{cp_id}/change-availability"),
]


class _Schemas:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.components: dict[str, Any] = spec.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        for _ in range(50):  # bounded: a $ref chain
            if "$ref" not in schema:
                return schema
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        raise AssertionError("$ref chain too long")

    def type_of(self, schema: dict[str, Any], depth: int = 0) -> str:
        """A property's type, nullability allowed: JSON type (integer and number kept apart), the string
        format, array item types; object schemas by their property names."""
        assert depth < 20
        schema = self.resolve(schema)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                parts = {self.type_of(s, depth + 1) for s in schema[key] if self.resolve(s).get("type") != "null"}
                return "|".join(sorted(parts))
        kind = schema.get("type", "any")
        if kind == "array":
            return f"array<{self.type_of(schema.get('items', {}), depth + 1)}>"
        if kind == "string" and "format" in schema:
            return f"string:{schema['format']}"
        return str(kind)

    def response_schemas(self) -> set[str]:
        """Names of the component schemas reachable from any 2xx JSON response."""
        found: set[str] = set()
        todo: list[dict[str, Any]] = []
        for ops in self.spec["paths"].values():
            for op in ops.values():
                for code, response in op.get("responses", {}).items():
                    if code.startswith("2"):
                        todo.extend(c.get("schema", {}) for c in response.get("content", {}).values())
        for _ in range(100_000):  # bounded walk
            if not todo:
                return found
            schema = todo.pop()
            if "$ref" in schema:
                name = schema["$ref"].rsplit("/", 1)[-1]
                if name not in found:
                    found.add(name)
                    todo.append(self.components[name])
                continue
            for key in ("anyOf", "oneOf", "allOf"):
                todo.extend(schema.get(key, []))
            if isinstance(schema.get("items"), dict):
                todo.append(schema["items"])
            if isinstance(schema.get("additionalProperties"), dict):
                todo.append(schema["additionalProperties"])
            todo.extend(schema.get("properties", {}).values())
        raise AssertionError("schema walk did not end")


async def test_every_field_has_one_type_across_the_api_and_meter_start_is_a_number(db_url: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    async with running_central(db_url) as central:
        await central.register("TYPES")
        await central.add_token("T")
        async with central.api() as api:
            spec = (await api.get("/openapi.json")).json()
            schemas = _Schemas(spec)
            for method, path in TYPED_RESPONSES:
                content = spec["paths"][path][method]["responses"]
                ok = next(v for k, v in content.items() if k.startswith("2"))
                declared = schemas.resolve(ok["content"]["application/json"]["schema"])
                if declared.get("type") == "array":
                    declared = schemas.resolve(declared["items"])
                assert declared.get("properties"), f"{method} {path} declares no response schema"
            types: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
            for name in schemas.response_schemas():
                for prop, schema in schemas.components[name].get("properties", {}).items():
                    types[prop][schemas.type_of(schema)].add(name)
            shared = {prop: by_type for prop, by_type in types.items()
                      if sum(len(names) for names in by_type.values()) > 1}
            assert "meter_start_wh" in shared  # live state and transactions both declare it
            conflicts = {prop: {t: sorted(n) for t, n in by_type.items()} for prop, by_type in shared.items()
                         if len(by_type) > 1}
            assert conflicts == {}, conflicts
            assert set(types["meter_start_wh"]) == {"number"}
            assert set(types["started_at"]) == {"string:date-time"}

            async with websockets.connect(f"{central.ws_base}/TYPES", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth("TYPES", PASSWORD)) as ws:
                for frame in ([2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}],
                              [2, "s", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 12345,
                                                            "timestamp": iso(start)}]):
                    await ws.send(json.dumps(frame))
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3
                state = (await api.get("/api/v1/charge-points/TYPES/state")).json()
                listed = (await api.get("/api/v1/transactions", params={"charge_point_id": "TYPES"})).json()
    [open_tx] = state["open_transactions"]
    [tx] = listed
    for answer in (open_tx, tx):
        assert isinstance(answer["meter_start_wh"], int | float), answer
        assert not isinstance(answer["meter_start_wh"], bool)
        assert answer["meter_start_wh"] == 12345
        assert answer["started_at"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert UTC_TEXT.match(state["connection"]["connected_since"]), state["connection"]
    assert UTC_TEXT.match(state["connection"]["last_message_at"]), state["connection"]
