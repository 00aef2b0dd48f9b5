"""Baseline servers for the OCPP throughput benchmark, run as separate processes.

* ``echo``: plain websockets + json: parse the CALL, answer ``[3, id, {}]`` (the transport ceiling);
  it also holds idle connections as the raw baseline of the connection-memory benchmark;
* ``ocpp-lib``: the ``ocpp`` package's own v1.6 ChargePoint with a trivial MeterValues handler,
  default settings (jsonschema validation in a thread pool), as its documentation shows.

DEFLATE (echo only): ``none`` (no permessage-deflate), ``default`` (websockets' defaults) or
``WINDOW_BITS:MEM_LEVEL`` (the reduced windows csms.gateway.server negotiates, passed in by the caller),
optionally ``:nct`` (no context takeover either way: the compression state lives only while a
message is compressed or decompressed, so an idle connection keeps no zlib memory) or ``:snct``
(server_no_context_takeover only: the server's compressor is per message, its decompressor stays).

REUSE (echo only, ``reuse``): bind with SO_REUSEPORT, so that several echo processes share one port as the
gateway workers of ``csms serve --workers N`` do (the raw baseline of the fleet across workers).

``echo-uvloop`` is ``echo`` on uvloop (the baseline of csms with ``--event-loop uvloop``).

Usage: python -m csms.bench.servers echo|echo-uvloop|ocpp-lib PORT [DEFLATE [REUSE]]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def _deflate(spec: str) -> dict[str, Any]:
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    if spec == "none":
        return {"compression": None}
    if spec == "default":
        return {"compression": "deflate"}
    bits, mem_level, *flags = spec.split(":")
    return {"compression": None, "extensions": [ServerPerMessageDeflateFactory(
        server_max_window_bits=int(bits), client_max_window_bits=int(bits),
        server_no_context_takeover="nct" in flags or "snct" in flags, client_no_context_takeover="nct" in flags,
        compress_settings={"memLevel": int(mem_level)})]}


async def _echo(port: int, deflate: str, reuse_port: bool = False) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 2:  # answer CALLs only, as a central system would
                await ws.send(json.dumps([3, msg[1], {}]))

    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                     ping_interval=None, max_size=2**20, reuse_port=reuse_port, **_deflate(deflate)):
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
    deflate = sys.argv[3] if len(sys.argv) > 3 else "none"
    reuse = len(sys.argv) > 4 and sys.argv[4] == "reuse"
    if kind == "echo-uvloop":  # the baseline of csms on uvloop: the same loop on both sides of the ratio
        import uvloop

        uvloop.run(_echo(port, deflate, reuse))
        return
    asyncio.run(_echo(port, deflate, reuse) if kind == "echo" else _ocpp_lib(port))


if __name__ == "__main__":
    main()
