"""One charger's connection: moves frames between the socket and the protocol session.

The reader never waits for the charger (the ``ocpp`` package's receive loop does, and
deadlocks: its issue #130). CALLs go to a bounded per-connection queue that one
worker task drains in arrival order (transaction messages stay chronological, R15,
R40); responses to our own calls are matched at once. A CALL is answered only after
its events are durable on the bus; if they cannot be made durable the answer is
InternalError and the charger retries (R41).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from csms.errors import ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.metrics import GatewayMetrics
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


class Socket(Protocol):
    async def send(self, message: str) -> None: ...

    def __aiter__(self) -> Any: ...


class ChargerCallError(ChargerCommandError):
    """The charger answered our CALL with a CALLERROR, or with an invalid CALLRESULT."""

    def __init__(self, code: str, description: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


class OutgoingCalls:
    """CSMS-initiated calls: at most one outstanding per connection (R14), the rest queued."""

    def __init__(self, *, socket: Socket, version: str, timeout_s: float, max_queued: int,
                 metrics: GatewayMetrics) -> None:
        self._socket = socket
        self._version = version
        self._timeout_s = timeout_s
        self._max_queued = max_queued
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._pending: tuple[str, str, asyncio.Future[dict[str, Any]]] | None = None
        self._closed: Exception | None = None
        self.unsolicited = 0

    async def call(self, action: str, payload: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        if self._closed is not None:
            raise ChargerOfflineError("the charger disconnected")
        if self._waiting >= self._max_queued:
            raise ChargerCommandError(f"{self._max_queued} commands are already waiting for this charger")
        self._waiting += 1
        self._metrics.commands_outstanding.inc()
        try:
            async with self._lock:
                if self._closed is not None:
                    raise ChargerOfflineError("the charger disconnected")
                # Unique across all connections of the identity, never a per-socket counter (R9).
                message_id = str(uuid.uuid4())
                fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self._pending = (message_id, action, fut)
                started = time.perf_counter()
                try:
                    await self._socket.send(build_call(message_id, action, payload))
                    result = await asyncio.wait_for(fut, timeout_s or self._timeout_s)
                except TimeoutError:
                    self._metrics.commands.labels(action, "timeout").inc()
                    limit = timeout_s or self._timeout_s
                    raise ChargerTimeoutError(f"{action}: no answer within {limit:.0f} s") from None
                except ChargerCallError:
                    self._metrics.commands.labels(action, "callerror").inc()
                    raise
                finally:
                    # A late answer after the timeout finds nothing pending and is dropped (R16).
                    self._pending = None
                self._metrics.command_seconds.labels(action).observe(time.perf_counter() - started)
                self._metrics.commands.labels(action, "ok").inc()
                return result
        finally:
            self._waiting -= 1
            self._metrics.commands_outstanding.dec()

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
            code = canonical_code(msg.code)
            self._metrics.callerrors_received.labels(code[:40]).inc()
            fut.set_exception(ChargerCallError(code, msg.description[:255], msg.details))

    def close(self) -> None:
        self._closed = ChargerOfflineError("the charger disconnected")
        if self._pending is not None and not self._pending[2].done():
            self._pending[2].set_exception(ChargerOfflineError("the charger disconnected before answering"))

    @property
    def outstanding(self) -> int:
        return self._waiting


class ChargerConnection:
    def __init__(self, *, socket: Socket, session: OcppSession, bus: Bus, metrics: GatewayMetrics,
                 call_timeout_s: float, max_queued_calls: int, max_queued_commands: int) -> None:
        self.socket = socket
        self.session = session
        self._bus = bus
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[Call | Send, datetime, float]] = asyncio.Queue(maxsize=max_queued_calls)
        self._in_progress: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self.outgoing = OutgoingCalls(socket=socket, version=session.state.version, timeout_s=call_timeout_s,
                                      max_queued=max_queued_commands, metrics=metrics)
        self.last_message_at = datetime.now(UTC)
        cp = session.state.charge_point_id
        self.log = logging.LoggerAdapter(logger, {"charge_point_id": cp})

    async def run(self) -> None:
        try:
            async for raw in self.socket:
                await self._on_frame(raw)
        finally:
            self.outgoing.close()
            if self._worker is not None:
                # Let the CALLs already received finish: their data must not be lost.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._worker), 10)
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._worker

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
            self.log.info("rejected frame from %s: %s", self.session.state.charge_point_id, exc.error.description)
            await self.socket.send(self.session.error_frame(exc.message_id, exc.error))
            return
        except FrameIgnored as exc:
            self._metrics.messages.labels("-", "in", "ignored").inc()
            self.log.debug("ignored frame: %s", exc.reason)
            return
        if isinstance(msg, Call | Send):
            if msg.message_id in self._in_progress:
                # An existing call with the same id is being handled (1.6J §4.2.3; R9).
                await self.socket.send(self.session.error_frame(
                    msg.message_id, RpcFrameworkError("a message with this id is already being processed")))
                return
            self._in_progress.add(msg.message_id)
            await self._queue.put((msg, received_at, started))  # full queue: stop reading (back-pressure)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._drain(), name=f"calls-{self.session.state.charge_point_id}")
        else:
            self.outgoing.resolve(msg)

    async def _drain(self) -> None:
        while not self._queue.empty():
            msg, received_at, started = self._queue.get_nowait()
            try:
                await self._handle(msg, received_at, started)
            finally:
                self._in_progress.discard(msg.message_id)

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
        await self.socket.send(frame)
        self._metrics.handling_seconds.labels(action_label).observe(time.perf_counter() - started)
