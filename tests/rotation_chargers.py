"""Chargers that take (or refuse, or ignore) a key rotation, and the helpers the key rotation tests share."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.exceptions import InvalidStatus

from tests.central import RunningCentral
from tests.chargers import basic_auth


class KeyCharger16(ChargePoint16):  # type: ignore[misc]
    """Answers ChangeConfiguration AuthorizationKey with ``answer`` ("hang": never answers)."""

    answer = "Accepted"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: list[str] = []

    @on("ChangeConfiguration")
    async def change_configuration(self, key: str, value: str, **kw: Any) -> Any:
        assert key == "AuthorizationKey"
        self.keys.append(value)
        if self.answer == "hang":
            await asyncio.Event().wait()
        return result16.ChangeConfiguration(status=self.answer)


class Rejecting16(KeyCharger16):
    answer = "Rejected"


class Hanging16(KeyCharger16):
    answer = "hang"


class KeyCharger201(ChargePoint201):  # type: ignore[misc]
    """Answers SetVariables SecurityCtrlr.BasicAuthPassword with ``answer``."""

    answer = "Accepted"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: list[str] = []

    @on("SetVariables")
    def set_variables(self, set_variable_data: list[dict[str, Any]], **kw: Any) -> Any:
        (item,) = set_variable_data
        assert item["component"] == {"name": "SecurityCtrlr"}
        assert item["variable"] == {"name": "BasicAuthPassword"}
        self.keys.append(item["attribute_value"])
        return result201.SetVariables(set_variable_result=[{
            "attribute_status": self.answer, "component": {"name": "SecurityCtrlr"},
            "variable": {"name": "BasicAuthPassword"}}])


class Rejecting201(KeyCharger201):
    answer = "Rejected"


async def boot(cp: Any, version: str) -> None:
    if version == "1.6":
        await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
    else:
        await cp.call(call201.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                                               reason="PowerUp"))


async def status(ws_base: str, cp_id: str, password: str | bytes, version: str = "1.6") -> int:
    """101 if the websocket opened with this password, else the HTTP status of the refusal."""
    try:
        async with websockets.connect(f"{ws_base}/{cp_id}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                      additional_headers=basic_auth(cp_id, password), open_timeout=30):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def rotations(central: RunningCentral, cp_id: str) -> list[dict[str, Any]]:
    async with central.api() as api:
        reply = await api.get(f"/api/v1/charge-points/{cp_id}/credentials/rotations")
    assert reply.status_code == 200, reply.text
    return list(reply.json())


def steps(rotation: dict[str, Any]) -> list[str]:
    return [e["step"] for e in rotation["events"]]


async def db_row(db_url: str, sql: str, *args: Any) -> asyncpg.Record:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(sql, *args)
    finally:
        await conn.close()
    assert row is not None
    return row


async def wait_for(check: Any, *, timeout_s: float = 30.0, what: str = "") -> Any:
    """Poll ``check()`` (async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")
