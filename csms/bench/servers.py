"""Baseline servers for the OCPP throughput benchmark, run as separate processes.

* ``echo``: plain websockets + json: parse the CALL, answer ``[3, id, {}]`` (the transport ceiling);
* ``ocpp-lib``: the ``ocpp`` package's own v1.6 ChargePoint with a trivial MeterValues handler,
  default settings (jsonschema validation in a thread pool), as its documentation shows.

Usage: python -m csms.bench.servers echo|ocpp-lib PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def _echo(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            await ws.send(json.dumps([3, msg[1], {}]))

    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"], compression=None,  # type: ignore[list-item]
                     ping_interval=None, max_size=2**20):
        await asyncio.Future()


async def _ocpp_lib(port: int) -> None:
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result
    from websockets.asyncio.server import ServerConnection, serve

    class Central(ChargePoint):  # type: ignore[misc]
        @on("MeterValues")  # type: ignore[untyped-decorator]
        def meter_values(self, **kwargs: Any) -> Any:
            return call_result.MeterValues()

        @on("BootNotification")  # type: ignore[untyped-decorator]
        def boot(self, **kwargs: Any) -> Any:
            return call_result.BootNotification(current_time="2026-01-01T00:00:00Z", interval=300,
                                                status="Accepted")

    async def handler(ws: ServerConnection) -> None:
        cp = Central(ws.request.path.rsplit("/", 1)[-1] if ws.request else "x", ws)
        try:
            await cp.start()
        except Exception:  # noqa: BLE001 - a closed connection ends the library's loop this way
            return

    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"], compression=None,  # type: ignore[list-item]
                     ping_interval=None, max_size=2**20):
        await asyncio.Future()


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    kind, port = sys.argv[1], int(sys.argv[2])
    asyncio.run(_echo(port) if kind == "echo" else _ocpp_lib(port))


if __name__ == "__main__":
    main()
