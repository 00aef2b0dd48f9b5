"""The synchronous answer path against real websockets on loopback: used only when nothing would wait."""

from __future__ import annotations

import asyncio
import socket as socket_module

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from csms.gateway.fast_send import send_now


async def _pair(**server_options: object) -> tuple[asyncio.Future[ServerConnection], object]:
    accepted: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        accepted.set_result(ws)
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, **server_options)  # type: ignore[arg-type]
    return accepted, server


async def test_an_open_socket_is_written_at_once_and_in_order() -> None:
    accepted, server = await _pair()
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    async with server, connect(f"ws://127.0.0.1:{port}") as client:  # type: ignore[attr-defined]
        ws = await accepted
        assert all(send_now(ws, f'[3,"{i}",{{}}]') for i in range(50))
        await ws.send('[3,"last",{}]')  # the coroutine path still follows the frames written directly
        got = [await asyncio.wait_for(client.recv(), 10) for _ in range(51)]
        assert got == [f'[3,"{i}",{{}}]' for i in range(50)] + ['[3,"last",{}]']


async def test_a_paused_transport_is_left_to_the_coroutine() -> None:
    # A peer that stops reading: the server's write buffer passes its high-water mark.
    accepted, server = await _pair(write_limit=4096)
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    async with server:  # type: ignore[attr-defined]
        raw = socket_module.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        try:
            ws = await asyncio.wait_for(accepted, 10)
            frame = "x" * 65536
            sent = 0
            async with asyncio.timeout(30):
                while send_now(ws, frame):
                    sent += 1
                    await asyncio.sleep(0)
            assert ws.paused  # what it refused, `send` would have had to wait for
            assert sent >= 1
        finally:
            raw.close()


async def test_a_closed_socket_or_another_object_is_not_written() -> None:
    accepted, server = await _pair()
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    async with server:  # type: ignore[attr-defined]
        async with connect(f"ws://127.0.0.1:{port}"):
            ws = await accepted
        await ws.wait_closed()
        assert not send_now(ws, "[3,\"1\",{}]")
    assert not send_now(object(), "[3,\"1\",{}]")
