"""Chargers for the integration tests, built on the ``ocpp`` package's own ChargePoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v201 import ChargePoint as ChargePoint201


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def basic_auth(cp_id: str, password: str | bytes) -> dict[str, str]:
    raw = password if isinstance(password, bytes) else password.encode()
    return {"Authorization": "Basic " + base64.b64encode(cp_id.encode() + b":" + raw).decode()}


@contextlib.asynccontextmanager
async def connect_charger(url: str, cp_id: str, version: str, *, password: str | bytes | None,
                          ssl_context: ssl.SSLContext | None = None,
                          cls: type[Any] | None = None) -> AsyncIterator[Any]:
    """Open a websocket and run an ``ocpp`` ChargePoint on it until the block ends."""
    headers = basic_auth(cp_id, password) if password is not None else {}
    ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=headers, ssl=ssl_context, open_timeout=10)
    klass = cls or (ChargePoint16 if version == "1.6" else ChargePoint201)
    cp = klass(cp_id, ws, response_timeout=10)
    task = asyncio.create_task(cp.start())
    try:
        yield cp
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await ws.close()


def t0() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
