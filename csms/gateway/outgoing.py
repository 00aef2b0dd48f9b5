"""CSMS-initiated calls on one connection: at most one outstanding (R14), the rest queued.

Writing the CALL and waiting for its answer share one call timeout; a write the charger
does not take marks the connection "not reading" so that the commands behind it fail at
once (issue 11 item 19) instead of one timeout each.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from csms.common.errors import (
    ChargerBusyError,
    ChargerCommandError,
    ChargerNotReadingError,
    ChargerOfflineError,
    ChargerTimeoutError,
)
from csms.gateway.metrics import GatewayMetrics
from csms.ocpp.errors import OcppError, canonical_code, received_error_code_label
from csms.ocpp.framing import CallError, CallResult, CallResultError, build_call
from csms.ocpp.redact import loggable_frame
from csms.ocpp.validation import validate

logger = logging.getLogger(__name__)

# What a failed write to a websocket raises: the connection is gone (websockets wraps
# transport errors in ConnectionClosed; OSError covers a transport that fails first).
SEND_FAILURES = (ConnectionClosed, OSError)


class Socket(Protocol):
    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


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
        frame = build_call(message_id, action, payload)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> %s", self._name, loggable_frame(frame), extra={"charge_point_id": self._name})
        write = asyncio.create_task(self._socket.send(frame),
                                    name=f"ocpp-command-write-{self._name}")
        try:
            async with asyncio.timeout(limit):
                try:
                    # Shielded: giving up on the write must not cancel it half-way; the frame is in
                    # the write buffer already and leaves when the charger reads again.
                    await asyncio.shield(write)
                except SEND_FAILURES:
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
