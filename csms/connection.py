"""One charger's connection: moves frames between the socket and the protocol session.

The reader never waits for the charger (the ``ocpp`` package's receive loop does, and
deadlocks: its issue #130). CALLs go to a bounded per-connection queue that one
worker task drains in arrival order (transaction messages stay chronological, R15,
R40); responses to our own calls are matched at once. A CALL is answered only after
its events are durable on the bus; if they cannot be made durable the answer is
InternalError and the charger retries (R41).

Every way a connection ends ends its handler: the worker survives a failed or stuck
send (what was received is still stored, a closed socket is simply not answered), the
reader's wait for room in the full queue never outlives the socket, and the worker is
stopped within ``drain_timeout_s`` of the disconnect. A write to a socket the charger does
not read is bounded by the call timeout; after one such write, operator commands fail at
once until it completes (the charger is not reading, nothing more can get through).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from csms.errors import (
    ChargerBusyError,
    ChargerCommandError,
    ChargerNotReadingError,
    ChargerOfflineError,
    ChargerTimeoutError,
)
from csms.metrics import GatewayMetrics, received_error_code_label
from csms.ocpp.errors import InternalError, OcppError, RpcFrameworkError, canonical_code
from csms.ocpp.framing import (
    Call,
    CallError,
    CallResult,
    CallResultError,
    FrameIgnored,
    FrameRejected,
    Send,
    build_call,
)
from csms.ocpp.session import OcppSession
from csms.ocpp.validation import validate
from schemas.bus import Bus, BusError

logger = logging.getLogger(__name__)

# What a failed write to a websocket raises: the connection is gone (websockets wraps
# transport errors in ConnectionClosed; OSError covers a transport that fails first).
_SEND_FAILURES = (ConnectionClosed, OSError)


class Socket(Protocol):
    async def send(self, message: str) -> None: ...

    def __aiter__(self) -> Any: ...

    async def wait_closed(self) -> None: ...


class ChargerCallError(ChargerCommandError):
    """The charger answered our CALL with a CALLERROR, or with an invalid CALLRESULT."""

    def __init__(self, code: str, description: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


class OutgoingCalls:
    """CSMS-initiated calls: at most one outstanding per connection (R14), the rest queued.

    Writing the CALL and waiting for its answer share one call timeout. A write that does not
    complete within it (the charger's socket does not drain) marks the connection "not
    reading": the commands waiting behind it, and new ones, fail at once (504) until that
    write completes or the connection ends (409).
    """

    def __init__(self, *, socket: Socket, version: str, timeout_s: float, max_queued: int,
                 metrics: GatewayMetrics, name: str = "") -> None:
        self._socket = socket
        self._version = version
        self._timeout_s = timeout_s
        self._max_queued = max_queued
        self._metrics = metrics
        self._name = name
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._pending: tuple[str, str, asyncio.Future[dict[str, Any]]] | None = None
        self._closed: Exception | None = None
        self._stuck_write: asyncio.Task[None] | None = None
        self._stuck_since = 0.0
        self.unsolicited = 0

    def _check_deliverable(self) -> None:
        if self._closed is not None:
            raise ChargerOfflineError("the charger disconnected")
        if self._stuck_write is not None:
            waited = time.monotonic() - self._stuck_since
            raise ChargerNotReadingError(f"the charger is not reading its connection: a command written "
                                         f"{waited:.0f} s ago has not been taken yet")

    async def call(self, action: str, payload: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        limit = timeout_s or self._timeout_s
        try:
            self._check_deliverable()
        except ChargerNotReadingError:
            self._metrics.commands.labels(action, "not_reading").inc()
            raise
        if self._waiting >= self._max_queued:
            raise ChargerBusyError(f"{self._max_queued} commands are already waiting for this charger")
        self._waiting += 1
        self._metrics.commands_outstanding.inc()
        try:
            async with self._lock:
                try:
                    self._check_deliverable()
                except ChargerNotReadingError:
                    self._metrics.commands.labels(action, "not_reading").inc()
                    raise
                return await self._call_locked(action, payload, limit)
        finally:
            self._waiting -= 1
            self._metrics.commands_outstanding.dec()

    async def _call_locked(self, action: str, payload: dict[str, Any], limit: float) -> dict[str, Any]:
        # Unique across all connections of the identity, never a per-socket counter (R9).
        message_id = str(uuid.uuid4())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending = (message_id, action, fut)
        started = time.perf_counter()
        write = asyncio.create_task(self._socket.send(build_call(message_id, action, payload)),
                                    name=f"ocpp-command-write-{self._name}")
        try:
            async with asyncio.timeout(limit):
                try:
                    # Shielded: giving up on the write must not cancel it half-way; the frame is in
                    # the write buffer already and leaves when the charger reads again.
                    await asyncio.shield(write)
                except _SEND_FAILURES:
                    raise ChargerOfflineError("the charger disconnected before the command was sent") from None
                result = await fut
        except TimeoutError:
            if not write.done():
                self._stuck_write = write
                self._stuck_since = time.monotonic()
                self._metrics.commands.labels(action, "not_reading").inc()
                raise ChargerNotReadingError(f"{action}: could not be written within {limit:g} s; the charger "
                                             "is not reading its connection") from None
            self._metrics.commands.labels(action, "timeout").inc()
            raise ChargerTimeoutError(f"{action}: no answer within {limit:g} s") from None
        except ChargerCallError:
            self._metrics.commands.labels(action, "callerror").inc()
            raise
        except ChargerOfflineError:
            self._metrics.commands.labels(action, "offline").inc()
            raise
        finally:
            # A late answer after the timeout finds nothing pending and is dropped (R16).
            self._pending = None
            if write.done():
                self._write_finished(write)
            else:
                write.add_done_callback(self._write_finished)  # clears "not reading" once it is taken
        self._metrics.command_seconds.labels(action).observe(time.perf_counter() - started)
        self._metrics.commands.labels(action, "ok").inc()
        return result

    def _write_finished(self, write: asyncio.Task[None]) -> None:
        if self._stuck_write is write:
            self._stuck_write = None
        if not write.cancelled():
            write.exception()  # a write that failed means the connection is gone; nothing to report

    def resolve(self, msg: CallResult | CallError | CallResultError) -> None:
        pending = self._pending
        if pending is None or pending[0] != msg.message_id or pending[2].done():
            # Unsolicited or late: counted and dropped, never queued (R16, R55).
            self.unsolicited += 1
            self._metrics.unsolicited_responses.inc()
            return
        _, action, fut = pending
        if isinstance(msg, CallResult):
            try:
                validate(self._version, action, msg.payload, response=True)
            except OcppError as exc:
                fut.set_exception(ChargerCallError("InvalidResponse", exc.description, exc.details))
                return
            fut.set_result(msg.payload)
        else:
            # The label is one of the version's codes or "other": a charger must not mint label values.
            self._metrics.callerrors_received.labels(received_error_code_label(self._version, msg.code)).inc()
            fut.set_exception(ChargerCallError(canonical_code(msg.code)[:64], msg.description[:255], msg.details))

    def close(self) -> None:
        self._closed = ChargerOfflineError("the charger disconnected")
        if self._pending is not None and not self._pending[2].done():
            self._pending[2].set_exception(ChargerOfflineError("the charger disconnected before answering"))
        if self._stuck_write is not None:
            self._stuck_write.cancel()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def outstanding(self) -> int:
        return self._waiting


class RejectedFrameLog:
    """Rejected frames are logged without letting a charger fill the log: the first
    ``per_interval`` of each ``interval_s`` at INFO, the rest at DEBUG and counted in one INFO
    line when the interval has passed (or the connection ends). Metrics count every frame."""

    def __init__(self, log: logging.LoggerAdapter[logging.Logger], charge_point_id: str, *, interval_s: float,
                 per_interval: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._cp = charge_point_id
        self._interval_s = interval_s
        self._per_interval = per_interval
        self._clock = clock
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed = 0
        self._last = ""

    def rejected(self, description: str) -> None:
        now = self._clock()
        if self._window_start is None or now - self._window_start >= self._interval_s:
            self.flush()
            self._window_start = now
            self._logged = 0
        if self._logged < self._per_interval:
            self._logged += 1
            self._log.info("rejected frame from %s: %s", self._cp, description)
            return
        self._suppressed += 1
        self._last = description
        self._log.debug("rejected frame from %s: %s", self._cp, description)

    def flush(self) -> None:
        if self._suppressed:
            self._log.info("%d more frames rejected from %s in %.0f s (the last: %s)", self._suppressed, self._cp,
                           self._interval_s, self._last)
            self._suppressed = 0


class ChargerConnection:
    def __init__(self, *, socket: Socket, session: OcppSession, bus: Bus, metrics: GatewayMetrics,
                 call_timeout_s: float, max_queued_calls: int, max_queued_commands: int,
                 drain_timeout_s: float = 10.0, rejected_frame_log_interval_s: float = 60.0,
                 rejected_frame_log_burst: int = 5) -> None:
        self.socket = socket
        self.session = session
        self._bus = bus
        self._metrics = metrics
        self._send_timeout_s = call_timeout_s
        self._drain_timeout_s = drain_timeout_s
        # None is the worker's signal to stop once everything before it is handled.
        self._queue: asyncio.Queue[tuple[Call | Send, datetime, float] | None] = asyncio.Queue(
            maxsize=max_queued_calls)
        self._in_progress: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self._socket_closed: asyncio.Task[None] | None = None
        self._answering = True
        self._write_stuck_logged = False
        cp = session.state.charge_point_id
        self._name = cp
        self.outgoing = OutgoingCalls(socket=socket, version=session.state.version, timeout_s=call_timeout_s,
                                      max_queued=max_queued_commands, metrics=metrics, name=cp)
        self.last_message_at = datetime.now(UTC)
        self.log = logging.LoggerAdapter(logger, {"charge_point_id": cp})
        self._rejected = RejectedFrameLog(self.log, cp, interval_s=rejected_frame_log_interval_s,
                                          per_interval=rejected_frame_log_burst)

    async def run(self) -> None:
        """Read frames until the socket closes; then let the worker finish what was received."""
        self._worker = asyncio.create_task(self._work(), name=f"ocpp-calls-{self._name}")
        try:
            async for raw in self.socket:
                await self._on_frame(raw)
        finally:
            self.outgoing.close()
            try:
                await self._finish()
            finally:
                self._rejected.flush()

    async def _finish(self) -> None:
        worker = self._worker
        assert worker is not None
        try:
            # The CALLs already received are handled to the end (their data must not be lost),
            # within a bound: unanswered ones are sent again by the charger (R41).
            async with asyncio.timeout(self._drain_timeout_s):
                await self._queue.put(None)
                await asyncio.shield(worker)
        except TimeoutError:
            self.log.warning("%s: %d received CALLs not handled within %.0f s of the disconnect (unanswered; "
                             "the charger sends them again)", self._name, self._queue.qsize(),
                             self._drain_timeout_s)
        finally:
            worker.cancel()
            await asyncio.wait({worker})
            if self._socket_closed is not None:
                self._socket_closed.cancel()
                await asyncio.wait({self._socket_closed})
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    self._in_progress.discard(item[0].message_id)

    async def _work(self) -> None:
        """The per-connection worker: CALLs in arrival order; nothing a CALL does can end it."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            msg, received_at, started = item
            try:
                await self._handle(msg, received_at, started)
            except Exception:
                self.log.exception("handling %s from %s failed", msg.action, self._name)
            finally:
                self._in_progress.discard(msg.message_id)

    async def _answer(self, frame: str) -> None:
        """Send a frame to the charger; a closed socket is not answered, a stuck one not waited for."""
        if not self._answering:
            return
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await self.socket.send(frame)
        except TimeoutError:
            # The frame is in the write buffer and leaves when the charger reads again; the
            # keepalive ping ends a connection whose peer has stopped reading for good.
            if not self._write_stuck_logged:
                self._write_stuck_logged = True
                self.log.info("%s is not reading its connection: an answer was not taken within %.0f s",
                              self._name, self._send_timeout_s)
        except _SEND_FAILURES:
            self._answering = False
            self.log.debug("%s disconnected; the CALLs still queued are stored but not answered", self._name)

    def _closed_waiter(self) -> asyncio.Task[None]:
        if self._socket_closed is None:
            self._socket_closed = asyncio.create_task(self.socket.wait_closed(), name=f"ocpp-closed-{self._name}")
        return self._socket_closed

    async def _enqueue(self, item: tuple[Call | Send, datetime, float]) -> bool:
        """Queue a CALL for the worker; False if the socket closed while the queue stayed full."""
        try:
            self._queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            pass
        # Full: the socket is not read until the worker takes one (back-pressure on the charger),
        # but never longer than the socket lives (a charger leaving with its queue full).
        put = asyncio.create_task(self._queue.put(item), name=f"ocpp-enqueue-{self._name}")
        try:
            await asyncio.wait({put, self._closed_waiter()}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
                await asyncio.wait({put})
        return not put.cancelled()

    async def _on_frame(self, raw: str | bytes) -> None:
        received_at = datetime.now(UTC)
        self.last_message_at = received_at  # any message is proof of life (R18)
        started = time.perf_counter()
        try:
            if isinstance(raw, bytes) and not self.session.state.tolerant:
                # OCPP-J frames are text frames (1.6J §4.1.2; 2.0.1 Part 4 §4.1.2).
                msg = self.session.parse(raw)
                if isinstance(msg, Call):
                    raise FrameRejected(RpcFrameworkError("OCPP-J messages are text frames, not binary"),
                                        msg.message_id)
            else:
                msg = self.session.parse(raw)
        except FrameRejected as exc:
            self._metrics.messages.labels("-", "in", "rejected").inc()
            self._metrics.callerrors_sent.labels(exc.error.code).inc()
            self._rejected.rejected(exc.error.description)
            await self._answer(self.session.error_frame(exc.message_id, exc.error))
            return
        except FrameIgnored as exc:
            self._metrics.messages.labels("-", "in", "ignored").inc()
            self.log.debug("ignored frame: %s", exc.reason)
            return
        if isinstance(msg, Call | Send):
            if msg.message_id in self._in_progress:
                # An existing call with the same id is being handled (1.6J §4.2.3; R9).
                await self._answer(self.session.error_frame(
                    msg.message_id, RpcFrameworkError("a message with this id is already being processed")))
                return
            self._in_progress.add(msg.message_id)
            if not await self._enqueue((msg, received_at, started)):
                # Never queued, never answered: the charger sends it again on its next connection.
                self._in_progress.discard(msg.message_id)
        else:
            self.outgoing.resolve(msg)

    async def _handle(self, msg: Call | Send, received_at: datetime, started: float) -> None:
        call = msg if isinstance(msg, Call) else Call(msg.message_id, msg.action, msg.payload)
        outcome = await self.session.handle_call(call, received_at)
        frame = outcome.frame
        outcome_label = "error" if outcome.error_code else ("tolerated" if outcome.tolerated else "ok")
        if outcome.tolerated:
            self._metrics.tolerated.labels(call.action).inc()
        if outcome.events:
            publish_started = time.perf_counter()
            try:
                await self._bus.publish(outcome.events)
            except BusError as exc:
                # Not durable: refuse, so the charger retries (R41); never acknowledge lost data.
                self.log.warning("%s %s not durable, answering InternalError: %s",
                                 self.session.state.charge_point_id, call.action, exc)
                error = InternalError("the data could not be stored; retry later")
                frame = self.session.error_frame(call.message_id, error)
                outcome.error_code = error.code
                outcome_label = "error"
            self._metrics.bus_publish_seconds.observe(time.perf_counter() - publish_started)
        if outcome.error_code:
            self._metrics.callerrors_sent.labels(outcome.error_code).inc()
        # Unknown actions share one label: a charger must not be able to mint label values.
        action_label = "unknown" if outcome.error_code == "NotImplemented" else call.action
        self._metrics.messages.labels(action_label, "in", outcome_label).inc()
        if isinstance(msg, Send):
            return  # 2.1 SEND gets no answer at all (2.1 §4.2.4)
        await self._answer(frame)
        self._metrics.handling_seconds.labels(action_label).observe(time.perf_counter() - started)
