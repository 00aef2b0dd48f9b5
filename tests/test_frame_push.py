"""Messages pushed to a callback in place of websockets' Assembler, against real sockets on loopback:
what ``recv()`` guaranteed (whole messages, in order, UTF-8 checked, one end) still holds."""

from __future__ import annotations

import asyncio
import os
import socket as socket_module
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.asyncio.server import ServerConnection, serve

from csms.gateway.frame_push import FrameSink, install


class Received:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.changed = asyncio.Event()

    def __call__(self, message: str | bytes) -> None:
        self.messages.append(message)
        self.changed.set()

    async def until(self, count: int) -> list[str | bytes]:
        async with asyncio.timeout(30):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.messages


@asynccontextmanager
async def pushed(before_install: Callable[[ServerConnection], object] | None = None,
                 ) -> AsyncIterator[tuple[ClientConnection, asyncio.Future[FrameSink], Received, int]]:
    """A server whose handler installs a sink (after waiting for ``before_install``), and a client."""
    received = Received()
    sinks: asyncio.Future[FrameSink] = asyncio.get_running_loop().create_future()
    go = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        if before_install is not None:
            await go.wait()
        sink = install(ws, received)
        if not sinks.done():  # the first connection's sink; a second (raw) client shares the callback
            sinks.set_result(sink)
        await sink.ended
        await sink.stop()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as client:
            if before_install is not None:
                before_install(client)  # type: ignore[arg-type]
                go.set()
            yield client, sinks, received, port


async def test_messages_arrive_whole_and_in_order() -> None:
    async with pushed() as (client, sinks, received, _):
        await sinks
        for i in range(100):
            await client.send(f'[2,"{i}","Heartbeat",{{}}]')
        await client.send(["frag", "mented ", "text"])  # one message in three frames
        await client.send(b"\x00binary")
        got = await received.until(102)
    assert got[:100] == [f'[2,"{i}","Heartbeat",{{}}]' for i in range(100)]
    assert got[100:] == ["fragmented text", b"\x00binary"]


async def test_frames_that_came_before_the_sink_are_not_lost() -> None:
    sent: list[asyncio.Task[None]] = []

    def send_early(client: object) -> None:
        assert isinstance(client, ClientConnection)
        sent.extend(asyncio.create_task(client.send(f"early {i}")) for i in range(5))

    async with pushed(before_install=send_early) as (_client, sinks, received, _):
        await asyncio.gather(*sent)
        await sinks
        got = await received.until(5)
    assert got == [f"early {i}" for i in range(5)]


async def test_the_end_of_the_stream_is_signalled_once() -> None:
    async with pushed() as (client, sinks, received, _):
        sink = await sinks
        await client.send("last")
        await received.until(1)
        await client.close()
        async with asyncio.timeout(30):
            await sink.ended
    assert sink.closed
    sink.close()  # a second close changes nothing
    sink.put(object())  # type: ignore[arg-type]  # after the end nothing is delivered
    assert received.messages == ["last"]


def _masked_text_frame(payload: bytes, *, fin: bool = True, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_client(port: int) -> socket_module.socket:
    raw = socket_module.create_connection(("127.0.0.1", port))
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    reply = b""
    async with asyncio.timeout(30):
        while b"\r\n\r\n" not in reply:
            reply += await asyncio.to_thread(raw.recv, 4096)
    assert reply.startswith(b"HTTP/1.1 101")
    return raw


async def _close_code(raw: socket_module.socket) -> int:
    """The status code of the close frame the server sends (unmasked, small)."""
    data = b""
    async with asyncio.timeout(30):
        while len(data) < 4:
            chunk = await asyncio.to_thread(raw.recv, 4096)
            assert chunk, "closed without a close frame"
            data += chunk
    assert data[0] & 0x0F == 0x8
    return int(struct.unpack("!H", data[2:4])[0])


@pytest.mark.parametrize(("frames", "code"), [
    # RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection with 1007.
    ([_masked_text_frame(b"[2,\"1\",\"Heartbeat\",\xff]")], 1007),
    # Invalid UTF-8 that only shows once the fragments are joined.
    ([_masked_text_frame(b"[2,\"1\",\xe2\x82", fin=False), _masked_text_frame(b"\x28]", fin=True, opcode=0)], 1007),
    # More fragments than websockets' MAX_FRAGMENTS: 1009, as recv() answers it.
    ([_masked_text_frame(b"[", fin=False)] + [_masked_text_frame(b" ", fin=False, opcode=0)] * MAX_FRAGMENTS, 1009),
])
async def test_a_broken_message_fails_the_connection_with_the_rfc_code(frames: list[bytes], code: int) -> None:
    async with pushed() as (_client, sinks, received, port):
        await sinks
        raw = await _raw_client(port)
        try:
            for frame in frames:
                raw.sendall(frame)
            assert await _close_code(raw) == code
        finally:
            raw.close()
    assert received.messages == []


async def test_pause_stops_reading_until_resume() -> None:
    async with pushed() as (client, sinks, received, _):
        sink = await sinks
        await client.send("one")
        await received.until(1)
        sink.pause()
        sink.pause()  # idempotent
        assert sink.paused
        send = asyncio.create_task(client.send("two"))
        await send
        # Nothing more can be delivered while the transport does not read; the state to wait for is
        # the client's write having completed, after which only resume() lets the frame in.
        assert received.messages == ["one"]
        sink.resume()
        assert not bool(sink.paused)  # (bool: mypy keeps the narrowing from the assert above)
        assert await received.until(2) == ["one", "two"]
