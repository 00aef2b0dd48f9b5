"""The throughput load generator: refused handshakes are tried again, and the measured window has every connection.

A real websockets server on a loopback port stands in for a server that makes chargers wait at
the door (503 + Retry-After, as csms's per-source password-hashing share does).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from csms.bench import load


async def _answer(ws: ServerConnection) -> None:
    async for raw in ws:
        frame = json.loads(raw)
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"} if frame[2] == "BootNotification" else {}]))


def _refusing(first_n: int, status: int, refusals: Counter[str]) -> Any:
    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if refusals[request.path] < first_n:
            refusals[request.path] += 1
            response = connection.respond(status, "come back later\n")
            response.headers["Retry-After"] = "0"
            return response
        return None
    return process_request


async def _run_against(*, refuse_first: int, status: int, connections: int, seconds: float,
                       refusals: Counter[str]) -> dict[str, Any]:
    async with serve(_answer, "127.0.0.1", 0, process_request=_refusing(refuse_first, status, refusals),
                     subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        return await load.run(f"ws://127.0.0.1:{port}/ocpp", connections, seconds, "T", None, True, warmup_s=0.05,
                              samples=1, connect_timeout_s=30)


async def test_503_refusals_are_retried_and_every_connection_is_measured() -> None:
    refusals: Counter[str] = Counter()
    result = await _run_against(refuse_first=2, status=503, connections=3, seconds=0.3, refusals=refusals)
    assert sum(refusals.values()) == 6            # two refusals for each of the three chargers
    assert result["connected"] == 3
    assert result["errors"] == 0
    assert result["total_ok"] > 0               # answered CALLs (the measured window itself is 0.3 s)


async def test_a_refusal_that_is_not_come_back_later_is_an_error_not_a_retry() -> None:
    refusals: Counter[str] = Counter()
    result = await _run_against(refuse_first=100, status=401, connections=2, seconds=0.1, refusals=refusals)
    assert sum(refusals.values()) == 2            # each tried once
    assert result["connected"] == 0
    assert result["errors"] == 2
    assert "InvalidStatus" in (result["first_failure"] or "")
