"""Keepalive pings for every connection, from one task instead of one per connection.

websockets' own keepalive runs a task per connection that sleeps between pings: a task, its
coroutine and a timer for every idle charger, 1.6 KiB of each connection's memory measured at
6,000 chargers (issue 15). Here one task walks the live connections and pings each once per
``ping_interval_s``, spread evenly over the interval (no burst of 20,000 pings at once). A ping
is a short task of its own (alive only until its pong) that closes the connection with 1011
when the pong is more than ``ping_timeout_s`` late, as websockets' keepalive does (RFC 6455
§5.5.2–5.5.3: an endpoint answers a ping with a pong "as soon as is practical").
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

logger = logging.getLogger(__name__)

KEEPALIVE_TICK_S = 1.0   # how often a slice of the connections is pinged (at most; shorter intervals tick faster)


class Keepalive:
    """Pings the sockets ``sockets()`` returns, while ``run`` runs."""

    def __init__(self, *, sockets: Callable[[], Sequence[object]], ping_interval_s: float,
                 ping_timeout_s: float) -> None:
        self._sockets = sockets
        self._interval_s = ping_interval_s
        self._timeout_s = ping_timeout_s
        self._pings: dict[Connection, asyncio.Task[None]] = {}   # the pings waiting for their pong
        self.timed_out = 0

    async def run(self) -> None:
        """Ping until cancelled; the pings in flight end with it."""
        tick_s = min(KEEPALIVE_TICK_S, self._interval_s / 10)
        ticks = max(1, round(self._interval_s / tick_s))
        try:
            while True:
                # One cycle: every connection open at its start, once, in ``ticks`` equal slices
                # (a connection opened meanwhile is first pinged within two intervals).
                cycle = [s for s in self._sockets() if isinstance(s, Connection)]
                per_tick = math.ceil(len(cycle) / ticks) if cycle else 0
                for i in range(ticks):
                    await asyncio.sleep(tick_s)
                    for socket in cycle[i * per_tick:(i + 1) * per_tick]:
                        self._ping(socket)
        finally:
            for task in list(self._pings.values()):
                task.cancel()
            if self._pings:
                await asyncio.wait(self._pings.values())

    def _ping(self, socket: Connection) -> None:
        if socket.protocol.state.name != "OPEN" or socket in self._pings:
            return  # closed or closing since the cycle began, or its last ping still waits for its pong
        task = asyncio.create_task(self._ping_one(socket), name="ocpp-keepalive-ping")
        self._pings[socket] = task
        task.add_done_callback(lambda _: self._pings.pop(socket, None))

    async def _ping_one(self, socket: Connection) -> None:
        try:
            async with asyncio.timeout(self._timeout_s or None):   # 0: pongs may be late (websockets' None)
                pong = await socket.ping()
                await pong
        except TimeoutError:
            self.timed_out += 1
            logger.info("closing a connection whose pong is more than %.0f s late", self._timeout_s)
            await socket.close(1011, "keepalive ping timeout")
        except ConnectionClosed:
            pass  # it ended meanwhile: nothing to keep alive
