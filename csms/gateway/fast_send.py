"""Answer frames written without a coroutine when the socket would not make us wait.

``websockets``' ``Connection.send`` is an async context manager around three steps: check
the state, let the Sans-I/O protocol frame the message, write the bytes to the transport,
then wait for the write buffer to drain. When the connection is open, no fragmented message
is being sent and the transport is not paused (its buffer is below the high-water mark),
nothing in it waits: the same three steps done directly cost no context manager, no
``asyncio.timeout`` and no suspension. Profiled under load (issue 15), that overhead was
about 7 % of the gateway's CPU. In every other case the caller uses ``send`` as before.

This uses ``Connection.protocol`` (documented) and ``send_data``/``paused`` (not
documented, present in websockets 15–17; ``tests/test_fast_send.py`` checks them on the
installed version against real sockets: open, paused and closed).
"""

from __future__ import annotations

from websockets.asyncio.connection import Connection
from websockets.protocol import State


def send_now(socket: object, frame: str) -> bool:
    """Write a text frame at once and return True, or return False: then ``await socket.send``."""
    if not isinstance(socket, Connection):
        return False
    if (socket.protocol.state is not State.OPEN or socket.paused or socket.transport.is_closing()
            or getattr(socket, "send_in_progress", None) is not None
            or getattr(socket, "fragmented_send_waiter", None) is not None):
        return False
    socket.protocol.send_text(frame.encode())
    socket.send_data()
    return True
