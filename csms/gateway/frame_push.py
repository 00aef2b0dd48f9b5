"""Received messages handed to the connection as they arrive, not fetched through ``recv()``.

``websockets``' ``Connection`` parses frames in ``data_received`` and puts data frames into an
``Assembler``; ``recv()`` then waits on a future for the next one, and the reader task is woken to
take it. For a charger that is one future, one task wake-up and one deque round trip per message,
on top of the work the message itself needs: about 6 % of the gateway's CPU under load (issue 15).
A ``FrameSink`` takes the Assembler's place on the connection (``Connection.recv_messages``; the
attribute and its ``put``/``close`` calls are not documented, present in websockets 15–17 and
checked against real sockets by ``tests/test_frame_push.py``) and calls back with each complete
message synchronously, still inside ``data_received``.

What the Assembler and ``recv()`` did besides is kept: fragmented messages are joined (at most
``MAX_FRAGMENTS``, else close 1009), a text message with invalid UTF-8 fails the connection with
1007 (RFC 6455 §8.1), and the end of the stream is signalled once. Flow control is the caller's:
it pauses the transport when it cannot take more (``pause``/``resume`` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from websockets.asyncio.connection import Connection
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.typing import BytesLike

logger = logging.getLogger(__name__)

OnMessage = Callable[[str | bytes], None]


async def _fail(conn: Connection, code: CloseCode, reason: str) -> None:
    # As ``Connection.recv`` does for the same errors: the close handshake, then the transport closes.
    with contextlib.suppress(ConnectionClosed):
        async with conn.send_context():
            conn.protocol.fail(code, reason)


class FrameSink:
    """Stands in for a connection's ``Assembler``: ``put`` each data frame, ``close`` at the end."""

    __slots__ = ("_conn", "_failing", "_on_message", "_parts", "closed", "ended", "paused")

    def __init__(self, conn: Connection, on_message: OnMessage) -> None:
        self._conn = conn
        self._on_message = on_message
        self._parts: list[Frame] | None = None
        self._failing: asyncio.Task[None] | None = None
        self.closed = False
        self.paused = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def put(self, frame: Frame) -> None:
        if self.closed or self._failing is not None:
            return  # after the end, or after we failed the connection: nothing more is read
        if self._parts is None:
            if frame.fin:
                self._deliver(frame.opcode is Opcode.TEXT, frame.data)
            else:
                self._parts = [frame]
            return
        if len(self._parts) >= MAX_FRAGMENTS:
            self._parts = None
            self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return
        self._parts.append(frame)
        if frame.fin:
            parts, self._parts = self._parts, None
            self._deliver(parts[0].opcode is Opcode.TEXT, b"".join(part.data for part in parts))

    def _deliver(self, text: bool, data: BytesLike) -> None:
        if not text:
            self._on_message(bytes(data))
            return
        try:
            message = str(data, "utf-8")
        except UnicodeDecodeError as exc:
            self._conn.set_connection_exc(exc)
            self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            return
        self._on_message(message)

    def _fail(self, code: CloseCode, reason: str) -> None:
        self._failing = asyncio.get_running_loop().create_task(_fail(self._conn, code, reason),
                                                               name="websocket-fail")

    def close(self) -> None:
        """The stream ended (``connection_lost``)."""
        if self.closed:
            return
        self.closed = True
        self._parts = None
        if not self.ended.done():
            self.ended.set_result(None)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._conn.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self.closed:
                self._conn.transport.resume_reading()

    async def stop(self) -> None:
        """Wait for a connection failure we started to finish its close handshake."""
        if self._failing is not None:
            await asyncio.wait({self._failing})


def install(conn: Connection, on_message: OnMessage) -> FrameSink:
    """Put a sink in the place of ``conn``'s Assembler; what the Assembler already holds goes first."""
    old = conn.recv_messages
    sink = FrameSink(conn, on_message)
    conn.recv_messages = sink  # type: ignore[assignment]
    waiting = list(old.frames.queue)
    old.frames.queue.clear()
    if old.paused:  # its own flow control had stopped reading; ours decides from now on
        old.paused = False
        conn.transport.resume_reading()
    for frame in waiting:
        sink.put(frame)
    if old.closed:
        sink.close()
    return sink
