"""One simulated charger's network side: connect, boot, send in order, retry, reconnect.

The model decides what to send and when; this module only moves frames and keeps time.
One CALL is outstanding at a time (OCPP-J §4.1.1); the central system's own CALLs are
answered by a reader task as they arrive, never waiting for ours (OCPP-J §4.1.1 allows
one outstanding CALL in each direction).

The model is not advanced before its first accepted BootNotification: a charger powers on,
connects and boots before it does anything else, and a fleet started with history in the
past (``csms run --demo``) replays that history over a live, accepted connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from csms.simulate.backoff import Backoff, Pacer
from csms.simulate.config import LinkOptions
from csms.simulate.model import ChargerModel, Outgoing
from csms.simulate.stats import Stats

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1 << 20


class _LinkClosed(Exception):
    """The websocket ended while a CALL was outstanding."""


def basic_auth_header(charge_point_id: str, password: str) -> str:
    raw = f"{charge_point_id}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def connect_error_kind(exc: BaseException) -> str:
    """A short, low-cardinality name for why a connection attempt failed."""
    if isinstance(exc, InvalidStatus):
        return f"handshake_http_{exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, InvalidMessage):
        # No (readable) HTTP answer: typically the server dropped the handshake it could not
        # finish in its open timeout, e.g. while busy verifying credentials.
        return "handshake_no_answer"
    if isinstance(exc, InvalidHandshake):
        return f"handshake_{type(exc).__name__.lower()}"
    if isinstance(exc, OSError):
        return f"connect_{errno.errorcode.get(exc.errno or 0, 'oserror').lower()}"
    return f"connect_{type(exc).__name__}"


class ChargerLink:
    def __init__(self, model: ChargerModel, *, options: LinkOptions, stats: Stats, pacer: Pacer, backoff: Backoff,
                 source_address: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self.options = options
        self.stats = stats
        self.pacer = pacer
        self.backoff = backoff
        self.source_address = source_address
        self.clock = clock
        self.wake = asyncio.Event()
        self._stop_requested = False
        self._finish_requested = False
        self._powered_off = False
        self._pending: tuple[str, asyncio.Future[list[Any]]] | None = None
        self._connected_once = False
        self._intentional_close = False
        cp_id = model.profile.id
        self.url = f"{options.url.rstrip('/')}/{quote(cp_id, safe='')}"
        password = options.password_for(cp_id)
        self._headers = {"Authorization": basic_auth_header(cp_id, password)} if password else {}
        self._subprotocol = Subprotocol(f"ocpp{model.version}")

    def stop(self) -> None:
        self._stop_requested = True
        self.wake.set()

    def finish(self) -> None:
        """Stop after ending the open sessions and sending what is queued (if connected)."""
        self._finish_requested = True
        self.wake.set()

    def stopping(self) -> bool:
        # A method, not an attribute: stop() may flip it during any await (and type checkers
        # would otherwise assume it keeps the value it was last tested for).
        return self._stop_requested

    # -- time -------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self.model.booted_once:
            self.model.advance(now)

    def _next_wakeup(self) -> float:
        if self.model.booted_once:
            return self.model.next_wakeup()
        return self.model.boot_due_at if self.model.connected else float("inf")

    async def _wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``; an incoming command, a closed link or stop() wakes us early."""
        if timeout_s > 0 and not self.wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.wake.wait()
        else:
            await asyncio.sleep(0)
        self.wake.clear()

    async def _sleep_until(self, t: float) -> None:
        """Wait until charger time ``t`` while the model keeps living (queueing what it generates)."""
        while not self.stopping() and not self._finish_requested:
            now = self.clock()
            if now >= t:
                return
            self._advance(now)
            await self._wait(min(t, self._next_wakeup()) - now)

    # -- the charger's life -----------------------------------------------------------------

    async def run(self) -> None:
        await self._sleep_until(self.model.start)   # power-on
        while not self.stopping():
            if self._finish_requested:
                return   # not connected: nothing can be sent any more
            now = self.clock()
            self._advance(now)
            if self.model.offline_until > now:
                await self._sleep_until(self.model.offline_until)
                continue
            ws = await self._connect()
            if ws is None:
                continue
            lost = False
            try:
                lost = await self._session(ws)
            finally:
                if self.stopping():
                    with contextlib.suppress(Exception):
                        await ws.close()
                else:
                    ws.transport.abort()
            if lost and not self.stopping():
                await self._sleep_until(self.clock() + self.backoff.next_delay_s())

    async def _connect(self) -> ClientConnection | None:
        delay = self.pacer.reserve(time.monotonic())
        if delay > 0:
            await self._sleep_until(self.clock() + delay)
        if self.stopping():
            return None
        extra: dict[str, Any] = {}
        try:
            if self.source_address:
                extra["sock"] = await self._bound_socket(self.source_address)
            ws = await connect(self.url, subprotocols=[self._subprotocol], additional_headers=self._headers,
                               compression="deflate" if self.options.deflate else None,
                               open_timeout=self.options.open_timeout_s, ping_interval=None, close_timeout=2,
                               max_size=MAX_FRAME_BYTES, max_queue=16, user_agent_header="csms-simulate",
                               **extra)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            if "sock" in extra:
                extra["sock"].close()
            if not self.stopping():
                self.stats.error(connect_error_kind(exc))
                await self._sleep_until(self.clock() + self.backoff.next_delay_s())
            return None
        if ws.subprotocol != self._subprotocol:
            self.stats.error("no_subprotocol")
            ws.transport.abort()
            await self._sleep_until(self.clock() + self.backoff.next_delay_s())
            return None
        return ws

    async def _bound_socket(self, source: str) -> socket.socket:
        """A TCP connection from ``source``. IP_BIND_ADDRESS_NO_PORT lets the kernel choose the
        local port at connect time, per (source, destination) pair: a plain bind(addr, 0) picks
        it before the destination is known, so every user of that source address would share
        one range of ~28k ports."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(parts.hostname, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            async with asyncio.timeout(self.options.open_timeout_s):
                await loop.sock_connect(sock, infos[0][4])
        except BaseException:
            sock.close()
            raise
        return sock

    async def _session(self, ws: ClientConnection) -> bool:
        """Run one connection; True if it was lost (back off before the next), False if we ended it."""
        self.stats.connection_opened()
        if not self._connected_once:
            self._connected_once = True
            self.stats.counters["chargers_connected_once"] += 1
        self._intentional_close = False
        self.model.on_connected(self.clock())
        reader = asyncio.create_task(self._read(ws), name=f"sim-read-{self.model.profile.id}")
        try:
            while not self.stopping():
                now = self.clock()
                self._advance(now)
                if self.model.offline_until > now:
                    # A planned offline period (or a reboot): cut the link as a network loss would.
                    self._intentional_close = True
                    return False
                if reader.done():
                    return True
                if self._finish_requested:
                    if not self.model.booted_once:
                        self._stop_requested = True
                        break
                    if not self._powered_off:
                        self._powered_off = True
                        self.model.power_off(now)
                    if self.model.head(now) is None:
                        self._stop_requested = True
                        break
                msg = self.model.head(now)
                if msg is not None:
                    if not await self._call(ws, msg):
                        self._intentional_close = True
                        return True
                    continue
                await self._wait(self._next_wakeup() - now)
            self._intentional_close = True
            return False
        finally:
            self.model.on_disconnected(self.clock(), shutting_down=self.stopping())
            self.stats.connection_closed()
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _call(self, ws: ClientConnection, msg: Outgoing) -> bool:
        """Send ``msg`` and hand its answer to the model; False when the link is to be dropped."""
        payload = self.model.materialize(msg)
        for _ in range(self.options.call_attempts):
            message_id = self.model.next_message_id()
            fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            self._pending = (message_id, fut)
            self.stats.sent(msg.action)
            started = time.perf_counter()
            try:
                await ws.send(orjson.dumps([2, message_id, msg.action, payload]).decode())
                async with asyncio.timeout(self.options.call_timeout_s):
                    reply = await fut
            except TimeoutError:
                if self.stopping():
                    return False
                self.stats.error("call_timeout")
                continue
            except (ConnectionClosed, _LinkClosed):
                return False
            finally:
                self._pending = None
            now = self.clock()
            if reply[0] == 3:
                self.stats.answered(msg.action, time.perf_counter() - started)
                self.model.on_result(msg, reply[2] if isinstance(reply[2], dict) else {}, now)
                if msg.action == "BootNotification" and self.model.registration == "Accepted":
                    self.backoff.reset()
            else:
                code = str(reply[2]) if len(reply) > 2 else "unknown"
                self.stats.error(f"callerror_{code}")
                self.model.on_call_error(msg, code, now)
            return True
        # No answer to any attempt: the link is presumed dead; reconnect (OCPP-J §4.1.1 / 5.3).
        self.model.drop_head_if_not_transactional(msg)
        return False

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    frame = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self.stats.error("unreadable_frame")
                    continue
                if not isinstance(frame, list) or len(frame) < 3:
                    self.stats.error("unreadable_frame")
                elif frame[0] == 2 and len(frame) >= 4:
                    await self._answer(ws, frame)
                elif frame[0] in (3, 4):
                    pending = self._pending
                    if pending is not None and pending[0] == frame[1] and not pending[1].done():
                        pending[1].set_result(frame)
                    else:
                        self.stats.counters["late_answers"] += 1
                else:
                    self.stats.error("unexpected_frame")
        except ConnectionClosed as exc:
            if not self.stopping() and not self._intentional_close:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self.stats.error(f"closed_by_server_{code}" if code is not None else "connection_lost")
        finally:
            pending = self._pending
            if pending is not None and not pending[1].done():
                pending[1].set_exception(_LinkClosed())
            self.wake.set()

    async def _answer(self, ws: ClientConnection, frame: list[Any]) -> None:
        message_id, action, payload = frame[1], str(frame[2]), frame[3]
        self.stats.counters[f"command:{action}"] += 1
        answer = self.model.handle_call(action, payload if isinstance(payload, dict) else {}, self.clock())
        if answer.payload is not None:
            out = [3, message_id, answer.payload]
        else:
            out = [4, message_id, answer.error or "GenericError", "not supported by the simulator", {}]
        await ws.send(orjson.dumps(out).decode())
        self.wake.set()   # the command may have queued messages (a session start, statuses)
