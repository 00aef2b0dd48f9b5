"""One charger's connection: the one object per socket, moving frames between the socket
and the protocol session and owning the connection's tasks.

The reader never waits for the charger (the ``ocpp`` package's receive loop does, and
deadlocks: its issue #130). CALLs go to a bounded per-connection queue that one
worker task drains in arrival order (transaction messages stay chronological, R15 [1.6J §4.1.1, 2.0.1 Part 4 §4.1.1],
R40 [1.6 §3.7]); responses to our own calls are matched at once. A CALL is answered only after
its events are durable on the bus; what to answer when they cannot be made durable is
the protocol core's decision (``OcppSession.not_durable``).

Messages are taken by callback as websockets parses them (``csms.gateway.frame_push``); when
the queue is full, the socket is not read until the worker takes one (back-pressure on the
charger). Every way a connection ends ends its handler: the worker survives a failed or stuck
send (what was received is still stored, a closed socket is simply not answered), and it is
stopped within ``drain_timeout_s`` of the disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosedOK

from csms.common.log_budget import BudgetedLog
from csms.gateway.call_queue import CallQueue
from csms.gateway.fast_send import send_now
from csms.gateway.frame_push import FrameSink, install
from csms.gateway.metrics import GatewayMetrics
from csms.gateway.outgoing import SEND_FAILURES, OutgoingCalls, Socket
from csms.ocpp.errors import RpcFrameworkError
from csms.ocpp.framing import Call, FrameIgnored, FrameRejected, Send
from csms.ocpp.redact import loggable_frame
from csms.ocpp.session import OcppSession
from csms.ocpp.types import ChargePointId, OcppVersion
from schemas.bus import Bus, BusError

logger = logging.getLogger(__name__)


class ChargerConnection:
    """A charger's websocket as this process knows it: identity, protocol session, tasks."""

    def __init__(self, *, socket: Socket, session: OcppSession, bus: Bus, metrics: GatewayMetrics,
                 call_timeout_s: float, max_queued_calls: int, max_queued_commands: int,
                 drain_timeout_s: float, rejected_frame_log_interval_s: float, rejected_frame_log_burst: int,
                 remote: str = "", connection_epoch: int | None = None) -> None:
        self.socket = socket
        self.session = session
        self.connected_at = datetime.now(UTC)
        self.remote = remote
        self.connection_epoch = connection_epoch
        self._bus = bus
        self._metrics = metrics
        self._send_timeout_s = call_timeout_s
        self._drain_timeout_s = drain_timeout_s
        # None is the worker's signal to stop once everything before it is handled.
        self._queue: CallQueue[tuple[Call | Send, datetime, float] | None] = CallQueue(max_queued_calls)
        # Message ids being handled (a dict: 64 bytes empty, where a set takes 216; issue 15).
        self._in_progress: dict[str, None] = {}
        self._worker: asyncio.Task[None] | None = None
        self._sink: FrameSink | None = None
        # CALLs read while the queue was full (reading is paused until the worker takes one).
        self._overflow: list[tuple[Call | Send, datetime, float]] = []
        self._answers: set[asyncio.Task[None]] = set()
        self._answering = True
        self._write_stuck_logged = False
        cp = session.state.charge_point_id
        self._name = cp
        self.outgoing = OutgoingCalls(socket=socket, version=session.state.version, timeout_s=call_timeout_s,
                                      max_queued=max_queued_commands, metrics=metrics, name=cp)
        self.last_message_at = datetime.now(UTC)
        self.log = logging.LoggerAdapter(logger, {"charge_point_id": cp})
        # Frames at DEBUG only, and the check is made once per connection, not per frame.
        self._frames_logged = logger.isEnabledFor(logging.DEBUG)
        self._rejected_log_interval_s = rejected_frame_log_interval_s
        self._rejected_log_burst = rejected_frame_log_burst
        self._rejected_log: BudgetedLog | None = None   # made at the first rejected frame

    @property
    def charge_point_id(self) -> ChargePointId:
        return self.session.state.charge_point_id

    @property
    def ocpp_version(self) -> OcppVersion:
        return self.session.state.version

    @property
    def usable(self) -> bool:
        """Commands can still be sent on it (it has not ended or been replaced)."""
        return not self.outgoing.closed

    async def command(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send an operator command; the protocol core decides first whether it may be sent."""
        self.session.prepare_command(action, payload)
        return await self.outgoing.call(action, payload)

    async def run(self) -> None:
        """Take messages until the socket closes; then let the worker finish what was received.

        Messages arrive by callback (``csms.gateway.frame_push``), not through ``recv()``; the end
        of the stream is the same as ``async for``'s: a normal close returns, any other raises.
        """
        socket = self.socket
        assert isinstance(socket, Connection)
        self._worker = asyncio.create_task(self._work(), name=f"ocpp-calls-{self._name}")
        try:
            self._sink = install(socket, self._on_message)
            await asyncio.shield(self._sink.ended)
            await self._sink.stop()
            await asyncio.shield(socket.connection_lost_waiter)  # close_exc is known once CLOSED
            exc = socket.close_exc
            if not isinstance(exc, ConnectionClosedOK):
                raise exc
        finally:
            self.outgoing.close()
            try:
                await self._finish()
            finally:
                if self._rejected_log is not None:
                    self._rejected_log.flush()

    async def _finish(self) -> None:
        worker = self._worker
        assert worker is not None
        try:
            # The CALLs already received are handled to the end (their data must not be lost),
            # within a bound: unanswered ones are sent again by the charger (R41 [1.6 §3.7.1, 2.0.1 E13]).
            async with asyncio.timeout(self._drain_timeout_s):
                while self._overflow:
                    await self._queue.put(self._overflow.pop(0))
                await self._queue.put(None)
                await asyncio.shield(worker)
        except TimeoutError:
            self.log.warning("%s: %d received CALLs not handled within %.0f s of the disconnect (unanswered; "
                             "the charger sends them again)", self._name, self._queue.qsize(),
                             self._drain_timeout_s)
        finally:
            worker.cancel()
            await asyncio.wait({worker})
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    self._in_progress.pop(item[0].message_id, None)
            for task in list(self._answers):
                task.cancel()
            if self._answers:
                await asyncio.wait(self._answers)

    async def _work(self) -> None:
        """The per-connection worker: CALLs in arrival order; nothing a CALL does can end it."""
        while True:
            item = await self._queue.get()
            if self._overflow:
                self._queue.put_nowait(self._overflow.pop(0))
            elif self._sink is not None and self._sink.paused:
                self._sink.resume()  # room again: read the socket again
            if item is None:
                return
            msg, received_at, started = item
            try:
                await self._handle(msg, received_at, started)
            except Exception:
                self.log.exception("handling %s from %s failed", msg.action, self._name)
            finally:
                self._in_progress.pop(msg.message_id, None)

    async def _answer(self, frame: str) -> None:
        """Send a frame to the charger; a closed socket is not answered, a stuck one not waited for."""
        if not self._answering:
            return
        if self._frames_logged:
            self.log.debug("%s -> %s", self._name, loggable_frame(frame))
        if send_now(self.socket, frame):
            return  # written at once: nothing to wait for (csms.gateway.fast_send)
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
        except SEND_FAILURES:
            self._answering = False
            self.log.debug("%s disconnected; the CALLs still queued are stored but not answered", self._name)

    def _rejected(self) -> BudgetedLog:
        if self._rejected_log is None:
            cp = self._name
            self._rejected_log = BudgetedLog(self.log, f"rejected frame from {cp}",
                                             summary=f"{{n}} more frames rejected from {cp}",
                                             interval_s=self._rejected_log_interval_s,
                                             per_interval=self._rejected_log_burst)
        return self._rejected_log

    def _answer_soon(self, frame: str) -> None:
        """An answer from the receive callback, which cannot wait: written now or by a task of its own."""
        if not self._answering:
            return
        if not self._frames_logged and send_now(self.socket, frame):
            return
        task = asyncio.create_task(self._answer(frame), name=f"ocpp-answer-{self._name}")
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    def _queue_call(self, item: tuple[Call | Send, datetime, float]) -> None:
        """Queue a CALL for the worker; when the queue is full, stop reading the socket (back-pressure)."""
        if not self._overflow:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                pass
        # The frames already read in this chunk still arrive; they wait here, in order, and nothing
        # more is read until the worker has taken one.
        self._overflow.append(item)
        if self._sink is not None:
            self._sink.pause()

    def _on_message(self, raw: str | bytes) -> None:
        """A complete message from the charger (called from the socket's ``data_received``)."""
        try:
            self._on_frame(raw)
        except Exception:
            self.log.exception("a frame from %s could not be taken", self._name)

    def _on_frame(self, raw: str | bytes) -> None:
        received_at = datetime.now(UTC)
        self.last_message_at = received_at  # any message is proof of life (R18 [1.6 §4.6, 2.0.1 G02.FR.04])
        if self._frames_logged:
            self.log.debug("%s <- %s", self._name, loggable_frame(raw))
        started = time.perf_counter()
        try:
            msg = self.session.parse(raw)
        except FrameRejected as exc:
            self._metrics.messages.labels("-", "in", "rejected").inc()
            self._metrics.callerrors_sent.labels(exc.error.code).inc()
            self._rejected().event(exc.error.description)
            self._answer_soon(self.session.error_frame(exc.message_id, exc.error))
            return
        except FrameIgnored as exc:
            self._metrics.messages.labels("-", "in", "ignored").inc()
            self.log.debug("ignored frame: %s", exc.reason)
            return
        if isinstance(msg, Call | Send):
            if msg.message_id in self._in_progress:
                # An existing call with the same id is being handled (1.6J §4.2.3; R9).
                self._answer_soon(self.session.error_frame(
                    msg.message_id, RpcFrameworkError("a message with this id is already being processed")))
                return
            self._in_progress[msg.message_id] = None
            self._queue_call((msg, received_at, started))
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
                self.log.warning("%s %s not durable: %s", self.session.state.charge_point_id, call.action, exc)
                outcome = self.session.not_durable(call)
                frame = outcome.frame
                outcome_label = "error"
            self._metrics.bus_publish_seconds.observe(time.perf_counter() - publish_started)
        if outcome.error_code:
            self._metrics.callerrors_sent.labels(outcome.error_code).inc()
        # Unknown actions share one label: a charger must not be able to mint label values.
        action_label = "unknown" if outcome.error_code == "NotImplemented" else call.action
        self._metrics.message_in(action_label, outcome_label).inc()
        if isinstance(msg, Send):
            return  # 2.1 SEND gets no answer at all (2.1 §4.2.4)
        await self._answer(frame)
        self._metrics.handling(action_label).observe(time.perf_counter() - started)
