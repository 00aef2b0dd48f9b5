"""What gateway nodes tell each other over the broker, and the pure rules around it.

Three messages (MessagePack, tagged), on the per-node topics of ``schemas.topics``:

* ``CommandRequest`` on the holder's commands topic: send this operator command to the charger's
  websocket ``connection_epoch`` if you hold it, answer on ``reply_to`` by ``deadline``;
* ``CommandReply`` on the asking node's replies topic, correlated by ``command_id``;
* ``CloseRequest`` on the old holder's commands topic: the charger reconnected elsewhere with
  ``below_epoch``; close its socket if it is older (OCPP-J: the newer connection wins; R28).

A command reaches the charger **at most once** although QoS 1 may deliver a message twice (a publisher
retransmission, a session resumed after a broker or client restart): the holder remembers every
``command_id`` it accepted (``DedupeCache``) and never sends one twice; a duplicate of a finished command
gets the same reply again, a duplicate of one in flight nothing (its reply follows), and a request past
its deadline is answered "expired" without being sent. The memory dies with the process, and so does
the connection a request names: a redelivery to a restarted holder, or for a connection that has been
replaced since, is answered "offline" and never sent. Outcomes map one to one onto the exceptions a
local command raises (``failure_reply`` / ``raise_for``), so the HTTP answer does not depend on where
the charger is connected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import msgspec

from csms.common.errors import (
    ChargerBusyError,
    ChargerCommandError,
    ChargerNotReadingError,
    ChargerOfflineError,
    ChargerTimeoutError,
)
from csms.gateway.outgoing import ChargerCallError
from csms.ocpp.commands import CommandRefused

Outcome = Literal["ok", "refused", "offline", "timeout", "not_reading", "callerror", "busy", "undeliverable",
                  "expired", "failed"]


class RemoteNodeError(ChargerCommandError):
    """The node holding the charger could not be reached (the broker is down) or failed (HTTP 503)."""


class CommandRequest(msgspec.Struct, frozen=True, tag="cmd", tag_field="t"):
    command_id: str
    charge_point_id: str
    connection_epoch: int
    action: str
    payload: dict[str, Any]
    reply_to: str
    deadline: float          # Unix time: after it the asking node has given up (nodes' clocks agree, NTP)
    timeout_s: float         # the same budget, relative: used when it ends sooner (clock skew)
    origin: str = ""


class CommandReply(msgspec.Struct, frozen=True, tag="reply", tag_field="t"):
    command_id: str
    outcome: Outcome
    response: dict[str, Any] | None = None
    code: str = ""
    description: str = ""
    details: dict[str, Any] | None = None
    node_id: str = ""


class CloseRequest(msgspec.Struct, frozen=True, tag="close", tag_field="t"):
    charge_point_id: str
    below_epoch: int
    origin: str = ""


NodeMessage = CommandRequest | CommandReply | CloseRequest

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(NodeMessage)


def encode(message: NodeMessage) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> NodeMessage:
    """Raises ``msgspec.DecodeError``/``msgspec.ValidationError`` for anything else."""
    return _decoder.decode(payload)


# -- outcomes ----------------------------------------------------------------------------------------

def failure_reply(command_id: str, exc: BaseException, *, node_id: str = "") -> CommandReply:
    """The reply for a command that failed at the holder the way a local command fails."""
    text = str(exc)[:1000]
    outcome: Outcome
    if isinstance(exc, CommandRefused):
        outcome = "refused"
    elif isinstance(exc, ChargerCallError):
        return CommandReply(command_id, "callerror", code=exc.code, description=exc.description,
                            details=exc.details or None, node_id=node_id)
    elif isinstance(exc, ChargerNotReadingError):
        outcome = "not_reading"
    elif isinstance(exc, ChargerTimeoutError):
        outcome = "timeout"
    elif isinstance(exc, ChargerBusyError):
        outcome = "busy"
    elif isinstance(exc, ChargerOfflineError):
        outcome = "offline"
    elif isinstance(exc, ChargerCommandError):
        outcome = "undeliverable"
    else:
        outcome, text = "failed", f"{type(exc).__name__} on node {node_id}"
    return CommandReply(command_id, outcome, description=text, node_id=node_id)


def raise_for(reply: CommandReply) -> dict[str, Any]:
    """The charger's answer of an "ok" reply; otherwise the exception the local command would raise."""
    text = reply.description or reply.outcome
    match reply.outcome:
        case "ok":
            return reply.response or {}
        case "refused":
            raise CommandRefused(text)
        case "callerror":
            raise ChargerCallError(reply.code, reply.description, reply.details)
        case "not_reading":
            raise ChargerNotReadingError(text)
        case "timeout" | "expired":
            raise ChargerTimeoutError(text)
        case "busy":
            raise ChargerBusyError(text)
        case "offline":
            raise ChargerOfflineError(text)
        case "undeliverable":
            raise ChargerCommandError(text)
        case _:
            raise RemoteNodeError(text)


# -- at most once --------------------------------------------------------------------------------------

class Seen(Enum):
    NEW = "new"              # accepted: send it, then ``complete``
    IN_FLIGHT = "in_flight"  # a duplicate of one being sent: ignore (its reply follows)
    DONE = "done"            # a duplicate of a finished one: send ``reply`` again
    FULL = "full"            # too many remembered commands within their deadline: refuse (busy)


@dataclass(frozen=True, slots=True)
class Admitted:
    seen: Seen
    reply: bytes | None = None


class DedupeCache:
    """The command ids a node accepted, remembered ``ttl_s`` after they finished (bounded in count).

    ``ttl_s`` exceeds every command's budget (a setting check), so a redelivery of a forgotten command is
    past its deadline and is answered "expired", never sent. When ``max_entries`` are remembered, the
    oldest finished ones whose deadline has passed are forgotten early; if none may be, new commands are
    refused (FULL) rather than risk sending one twice.
    """

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._in_flight: dict[str, float] = {}                           # id → deadline (monotonic)
        self._done: OrderedDict[str, tuple[float, float, bytes]] = OrderedDict()  # id → (forget at, deadline, reply)

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._done)

    def admit(self, command_id: str, *, deadline: float) -> Admitted:
        """``deadline``: monotonic time after which the command must not be sent any more."""
        now = self._clock()
        self._expire(now)
        if command_id in self._in_flight:
            return Admitted(Seen.IN_FLIGHT)
        done = self._done.get(command_id)
        if done is not None:
            return Admitted(Seen.DONE, done[2])
        if len(self) >= self._max:
            oldest = next(iter(self._done.values()), None)
            if oldest is None or oldest[1] > now:
                return Admitted(Seen.FULL)
            self._done.popitem(last=False)
        self._in_flight[command_id] = deadline
        return Admitted(Seen.NEW)

    def complete(self, command_id: str, reply: bytes) -> None:
        deadline = self._in_flight.pop(command_id, None)
        if deadline is None:
            return
        self._done[command_id] = (self._clock() + self._ttl_s, deadline, reply)

    def _expire(self, now: float) -> None:
        # Finished entries are in completion order with one ttl: the expired ones are at the front.
        while self._done:
            forget_at = next(iter(self._done.values()))[0]
            if forget_at > now:
                return
            self._done.popitem(last=False)
