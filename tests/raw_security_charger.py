"""A charger speaking raw OCPP-J frames, which records the order in which frames arrive (the
SignCertificate answer must come before the CertificateSigned CALL)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import websockets

from tests.chargers import basic_auth


class RawCharger:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.received: list[tuple[int, str]] = []        # (message type, action or message id), in order
        self._calls: list[tuple[str, str, dict[str, Any]]] = []   # CALLs from the CSMS not taken yet

    async def _read(self, timeout_s: float) -> list[Any]:
        frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        self.received.append((frame[0], frame[2] if frame[0] == 2 else frame[1]))
        if frame[0] == 2:
            self._calls.append((frame[1], frame[2], frame[3]))
        return list(frame)

    async def call(self, action: str, payload: dict[str, Any], *, message_id: str | None = None,
                   timeout_s: float = 10) -> dict[str, Any]:
        """Send a CALL; the CALLRESULT payload (AssertionError on a CALLERROR)."""
        mid = message_id or str(uuid.uuid4())
        await self.ws.send(orjson.dumps([2, mid, action, payload]).decode())
        while True:
            frame = await self._read(timeout_s)
            if frame[0] in (3, 4) and frame[1] == mid:
                assert frame[0] == 3, f"{action} answered with a CALLERROR: {frame}"
                result: dict[str, Any] = frame[2]
                return result

    async def expect_call(self, action: str, *, timeout_s: float = 15) -> tuple[str, dict[str, Any]]:
        """The next CALL of this action from the CSMS (others are left for later)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for index, (mid, name, payload) in enumerate(self._calls):
                if name == action:
                    del self._calls[index]
                    return mid, payload
            await self._read(max(0.1, deadline - loop.time()))

    async def reply(self, message_id: str, payload: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps([3, message_id, payload]).decode())

    async def answer(self, action: str, payload: dict[str, Any], *, timeout_s: float = 15) -> dict[str, Any]:
        """Wait for a CALL of ``action``, answer it with ``payload``; the CALL's payload."""
        mid, request = await self.expect_call(action, timeout_s=timeout_s)
        await self.reply(mid, payload)
        return request


@contextlib.asynccontextmanager
async def raw_charger(url: str, cp_id: str, version: str, *, password: str | None = None,
                      ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[RawCharger]:
    headers = basic_auth(cp_id, password) if password is not None else {}
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=headers, ssl=ssl_context, open_timeout=10) as ws:
        yield RawCharger(ws)


def boot_payload(version: str) -> dict[str, Any]:
    if version == "1.6":
        return {"chargePointVendor": "Acme", "chargePointModel": "Secure"}
    return {"chargingStation": {"vendorName": "Acme", "model": "Secure"}, "reason": "PowerUp"}
