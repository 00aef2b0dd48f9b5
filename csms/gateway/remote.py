"""Commands reach the charger's socket wherever it is (issue 13 item 4).

An operator command on any node: the charger's local connection if this node holds it (the fast
path, exactly as before); otherwise the fleet registry names the node that does (none: 409 at once),
and the command goes there over the broker (``csms.gateway.node_messages``), to be sent by that node
through the same ``ChargerConnection.command`` as a local one, so that one outstanding call per
charger holds there. The asking node waits ``call_timeout_s + command_forward_margin_s`` for the reply
(then 504). The holder sends each command id at most once (``DedupeCache``). The takeover message
(close an older socket of a charger that reconnected elsewhere) travels the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from csms.common.errors import ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.common.log_budget import BudgetedLog
from csms.gateway.fleet import DB_ERRORS, FleetDirectory, FleetMetrics
from csms.gateway.node_messages import (
    CloseRequest,
    CommandReply,
    CommandRequest,
    DedupeCache,
    RemoteNodeError,
    Seen,
    decode,
    encode,
    failure_reply,
    raise_for,
)
from csms.ocpp.commands import CommandRefused
from csms.ocpp.types import OcppVersion, ocpp_version
from schemas.topics import is_node_replies_topic, node_commands_topic, node_replies_topic

if TYPE_CHECKING:
    from csms.gateway.connection import ChargerConnection
    from csms.gateway.live import LiveConnections

logger = logging.getLogger(__name__)


class NodeLink(Protocol):
    """Publishing side of the node-to-node transport (``csms.bus.node_link.MqttNodeLink``)."""

    async def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1; raise ``ConnectionError`` if the broker cannot take it."""


class Holder(Protocol):
    """What the router needs of this node's gateway."""

    live: LiveConnections

    async def live_connection(self, charge_point_id: str) -> ChargerConnection | None: ...

    def close_older(self, charge_point_id: str, below_epoch: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command for a charger goes: this node's connection, or another node."""

    charge_point_id: str
    ocpp_version: OcppVersion
    node_id: str
    connection_epoch: int | None
    local: ChargerConnection | None = None


class Routed(Holder, Protocol):
    """A gateway that may take part in a fleet (``Gateway``)."""

    router: CommandRouter | None


async def locate(gateway: Routed, charge_point_id: str) -> Target | None:
    """Where a command for the charger goes: its connection here, or the node holding it; None: nowhere."""
    if gateway.router is not None:
        return await gateway.router.locate(charge_point_id)
    conn = await gateway.live_connection(charge_point_id)
    return _local(conn) if conn is not None else None


async def send(gateway: Routed, target: Target, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Send an operator command where ``locate`` found the charger; the charger's answer (or the exception
    the local command raises, wherever the charger is)."""
    if target.local is not None:
        return await target.local.command(action, payload)
    if gateway.router is None:
        raise ChargerOfflineError(f"charge point {target.charge_point_id} is not connected to this node")
    return await gateway.router.forward(target, action, payload)


def _local(conn: ChargerConnection) -> Target:
    return Target(conn.charge_point_id, conn.ocpp_version, conn.session.state.node_id, conn.connection_epoch, conn)


class CommandRouter:
    """Operator commands to chargers on any node, and other nodes' commands for chargers on this one."""

    def __init__(self, *, holder: Holder, directory: FleetDirectory | None, node_id: str, call_timeout_s: float,
                 margin_s: float, dedupe: DedupeCache, metrics: FleetMetrics,
                 log_interval_s: float = 60.0, log_burst: int = 5) -> None:
        self._holder = holder
        self._directory = directory
        self._node_id = node_id
        self._budget_s = call_timeout_s + margin_s
        self._dedupe = dedupe
        self._metrics = metrics
        self.link: NodeLink | None = None
        self._waiting: dict[str, asyncio.Future[CommandReply]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bad = BudgetedLog(logger, "ignored node message", summary="{n} more node messages ignored",
                                interval_s=log_interval_s, per_interval=log_burst)

    # -- asking ------------------------------------------------------------------------------------

    async def locate(self, charge_point_id: str) -> Target | None:
        """The charger's connection here, else the node holding it (None: connected nowhere)."""
        conn = await self._holder.live_connection(charge_point_id)
        if conn is not None:
            return _local(conn)
        if self._directory is None:
            return None
        try:
            entry = await self._directory.lookup(charge_point_id)
        except DB_ERRORS as exc:
            raise RemoteNodeError(f"the fleet registry is not reachable: {exc}") from exc
        if entry is None or entry.node_id == self._node_id:
            return None
        return Target(charge_point_id, ocpp_version(entry.ocpp_version), entry.node_id, entry.connection_epoch)

    async def forward(self, target: Target, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Ask the holding node to send the command; its reply, as the local command would end."""
        link = self.link
        if link is None:
            raise RemoteNodeError(f"charge point {target.charge_point_id} is connected to node {target.node_id}, "
                                  "which this node reaches only over the MQTT bus (--mqtt-url)")
        assert target.connection_epoch is not None
        command_id = uuid.uuid4().hex
        request = CommandRequest(command_id=command_id, charge_point_id=target.charge_point_id,
                                 connection_epoch=target.connection_epoch, action=action, payload=payload,
                                 reply_to=node_replies_topic(self._node_id), deadline=time.time() + self._budget_s,
                                 timeout_s=self._budget_s, origin=self._node_id)
        try:
            data = encode(request)
        except (msgspec.EncodeError, OverflowError, TypeError) as exc:
            raise CommandRefused(f"the payload cannot be forwarded to node {target.node_id}: {exc}") from None
        reply_future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = reply_future
        try:
            await link.publish(node_commands_topic(target.node_id), data)
            async with asyncio.timeout(self._budget_s):
                reply = await reply_future
        except ConnectionError as exc:
            self._metrics.remote_commands.labels("sent", "unreachable").inc()
            raise RemoteNodeError(f"{action} not sent: {exc}") from None
        except TimeoutError:
            self._metrics.remote_commands.labels("sent", "no_reply").inc()
            raise ChargerTimeoutError(f"{action}: no answer from node {target.node_id} within "
                                      f"{self._budget_s:g} s") from None
        finally:
            self._waiting.pop(command_id, None)
        self._metrics.remote_commands.labels("sent", reply.outcome).inc()
        return raise_for(reply)

    def request_close(self, node_id: str, charge_point_id: str, newer_epoch: int) -> None:
        """Tell ``node_id`` to close its socket of the charger older than ``newer_epoch`` (a takeover)."""
        if self.link is None:
            return
        message = encode(CloseRequest(charge_point_id, newer_epoch, origin=self._node_id))
        self._spawn(self._publish(node_commands_topic(node_id), message, what=f"takeover of {charge_point_id}"),
                    name=f"node-close-{charge_point_id}")

    # -- receiving ---------------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Everything the node link receives (called on its reader task: never blocks)."""
        try:
            message = decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._bad.event(f"undecodable message on {topic}: {exc}")
            return
        if isinstance(message, CommandReply):
            waiting = self._waiting.get(message.command_id)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
        elif isinstance(message, CloseRequest):
            if self._holder.close_older(message.charge_point_id, message.below_epoch):
                logger.info("charge point %s reconnected to node %s; closed its connection here",
                            message.charge_point_id, message.origin or "?")
                self._metrics.takeovers.labels("closed").inc()
        else:
            self._accept(message)

    def _accept(self, request: CommandRequest) -> None:
        if not is_node_replies_topic(request.reply_to):
            self._bad.event(f"command {request.command_id[:40]} with reply_to {request.reply_to[:80]!r}")
            return
        remaining = min(request.timeout_s, request.deadline - time.time())
        admitted = self._dedupe.admit(request.command_id, deadline=time.monotonic() + max(remaining, 0.0))
        if admitted.seen is Seen.IN_FLIGHT:
            self._metrics.remote_duplicates.inc()
            return
        if admitted.seen is Seen.DONE:
            self._metrics.remote_duplicates.inc()
            assert admitted.reply is not None
            self._spawn(self._publish(request.reply_to, admitted.reply, what="a repeated reply"),
                        name=f"node-reply-{request.command_id[:12]}")
            return
        if admitted.seen is Seen.FULL:
            reply = CommandReply(request.command_id, "busy", node_id=self._node_id,
                                 description=f"node {self._node_id} holds too many commands from other nodes")
            self._metrics.remote_commands.labels("handled", "busy").inc()
            self._spawn(self._publish(request.reply_to, encode(reply), what="a busy reply"),
                        name=f"node-reply-{request.command_id[:12]}")
            return
        self._spawn(self._execute(request, remaining), name=f"node-command-{request.charge_point_id}")

    async def _execute(self, request: CommandRequest, remaining_s: float) -> None:
        command_id, cp = request.command_id, request.charge_point_id
        try:
            reply = await self._run(request, remaining_s)
        except Exception as exc:  # whatever happens, the asking node gets an answer
            if not isinstance(exc, ChargerCommandError):
                logger.exception("command %s for %s from node %s failed", request.action, cp, request.origin)
            reply = failure_reply(command_id, exc, node_id=self._node_id)
        data = encode(reply)
        self._dedupe.complete(command_id, data)
        self._metrics.remote_commands.labels("handled", reply.outcome).inc()
        await self._publish(request.reply_to, data, what=f"the reply to {request.action} for {cp}")

    async def _run(self, request: CommandRequest, remaining_s: float) -> CommandReply:
        cp = request.charge_point_id
        if remaining_s <= 0:
            return CommandReply(request.command_id, "expired", node_id=self._node_id,
                                description=f"{request.action} reached node {self._node_id} after its deadline; "
                                            "not sent")
        conn = self._holder.live.get(cp)
        # Only to the connection the asking node found: the command ids this node remembers die with this
        # process, a connection epoch does too, so a redelivery to a later process (or a later connection)
        # can never be sent a second time. A charger that reconnected in between gets a 409, as locally.
        if conn is None or not conn.usable or conn.connection_epoch != request.connection_epoch:
            raise ChargerOfflineError(f"charge point {cp} is no longer connected to node {self._node_id} with "
                                      f"connection {request.connection_epoch}")
        try:
            async with asyncio.timeout(remaining_s):
                response = await conn.command(request.action, request.payload)
        except TimeoutError:
            return CommandReply(request.command_id, "timeout", node_id=self._node_id,
                                description=f"{request.action}: not answered before its deadline")
        return CommandReply(request.command_id, "ok", response=response, node_id=self._node_id)

    # -- tasks -------------------------------------------------------------------------------------

    async def _publish(self, topic: str, data: bytes, *, what: str) -> None:
        link = self.link
        try:
            if link is None:
                raise ConnectionError("no node link")
            await link.publish(topic, data)
        except ConnectionError as exc:
            logger.warning("could not send %s to %s: %s", what, topic, exc)

    def _spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.cancel()
        self._bad.flush()
