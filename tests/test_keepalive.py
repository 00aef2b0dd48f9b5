"""One keepalive task for every connection, against real websockets on loopback."""

from __future__ import annotations

import asyncio
import socket as socket_module
import time
from collections.abc import Callable

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from csms.gateway.keepalive import Keepalive


async def _server() -> tuple[Server, list[ServerConnection]]:
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        await ws.wait_closed()

    # ping_interval=None: websockets' own per-connection keepalive is off, as in the gateway.
    server = await serve(handler, "127.0.0.1", 0, ping_interval=None, close_timeout=1)
    return server, connections


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Wait (bounded) for a state, never for a time: on a busy machine a cycle may take longer."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_answering_connections_are_pinged_and_stay_open() -> None:
    server, connections = await _server()
    port = server.sockets[0].getsockname()[1]
    async with server:
        clients = [await connect(f"ws://127.0.0.1:{port}", ping_interval=None) for _ in range(5)]
        readers = [asyncio.create_task(c.wait_closed()) for c in clients]   # clients read, so they answer pings
        await _wait_for(lambda: len(connections) == 5)
        keepalive = Keepalive(sockets=lambda: list(connections), ping_interval_s=0.2, ping_timeout_s=2.0)
        task = asyncio.create_task(keepalive.run())
        try:
            # Every connection's pong came back (websockets measures its latency on it).
            await _wait_for(lambda: all(ws.latency > 0 for ws in connections))
            await asyncio.sleep(0.6)   # a few more cycles
            assert all(ws.state.name == "OPEN" for ws in connections)
            assert keepalive.timed_out == 0
        finally:
            task.cancel()
            await asyncio.wait({task})
            for c in clients:
                await c.close()
            await asyncio.wait(readers)


async def test_a_peer_that_never_answers_is_closed_with_1011() -> None:
    server, connections = await _server()
    port = server.sockets[0].getsockname()[1]
    async with server:
        raw = socket_module.create_connection(("127.0.0.1", port))   # completes the handshake, then never reads
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        try:
            await _wait_for(lambda: len(connections) == 1)
            keepalive = Keepalive(sockets=lambda: list(connections), ping_interval_s=0.2, ping_timeout_s=0.5)
            task = asyncio.create_task(keepalive.run())
            try:
                async with asyncio.timeout(30):
                    await connections[0].wait_closed()
                # The server closed it with 1011; the peer never answered the close either (1006 received).
                assert connections[0].protocol.close_sent is not None
                assert connections[0].protocol.close_sent.code == 1011
                assert keepalive.timed_out == 1
            finally:
                task.cancel()
                await asyncio.wait({task})
        finally:
            raw.close()


async def test_other_objects_and_closed_sockets_are_not_pinged() -> None:
    server, connections = await _server()
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with connect(f"ws://127.0.0.1:{port}"):
            await _wait_for(lambda: len(connections) == 1)
        await connections[0].wait_closed()
        keepalive = Keepalive(sockets=lambda: [object(), *connections], ping_interval_s=0.1, ping_timeout_s=0.5)
        task = asyncio.create_task(keepalive.run())
        await asyncio.sleep(0.3)
        assert not task.done()  # neither the object nor the closed socket made it fail
        task.cancel()
        await asyncio.wait({task})
        assert keepalive.timed_out == 0
