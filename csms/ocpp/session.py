"""One connection's protocol logic, without the socket: frames in, frames and events out.

``OcppSession.parse`` classifies a frame; ``handle_call`` runs the checks in the order
the spec implies and returns the answer frame plus the events that must be durable
before that answer is sent:

1. the action must be known in the connection's version (else NotImplemented: "not known by receiver",
   e.g. a 2.1-only action on a 2.0.1 connection) and be one a charger sends (else NotSupported:
   "recognized but not supported", e.g. a CSMS-to-charger action) — the spec meanings (R11 [2.0.1 Part 4
   §4.1.6]; 2.0.1/2.1 Part 4 §4.3), not the ``ocpp`` package's swapped ones;
2. before BootNotification is Accepted only BootNotification (and what we triggered)
   is allowed (SecurityError; B01.FR.10, B02.FR.09, B03.FR.07; 1.6 errata 3.10);
3. the payload must match the official schema (strict), unless the charger is marked
   tolerant, in which case the violation is recorded and counted instead;
4. the handler decides; a handler failure is InternalError, never a dead connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from csms.ocpp import commands, directions, handlers_v16, handlers_v21, handlers_v201
from csms.ocpp.context import Context, ProtocolState, Services
from csms.ocpp.errors import (
    InternalError,
    NotImplementedAction,
    NotSupportedAction,
    OcppError,
    RpcFrameworkError,
    SecurityError,
)
from csms.ocpp.framing import (
    Call,
    FrameRejected,
    Message,
    build_call_error,
    build_call_result,
    parse_frame,
)
from csms.ocpp.handlers_common import Handler, log_event
from csms.ocpp.typed_calls import typed_call
from csms.ocpp.validation import known_actions, validate
from schemas.events import Event

logger = logging.getLogger(__name__)

HANDLERS: Mapping[str, Mapping[str, Handler]] = {
    "1.6": handlers_v16.HANDLERS,
    "2.0.1": handlers_v201.HANDLERS,
    "2.1": handlers_v21.HANDLERS,
}
PRE_BOOT_ACTIONS = {"1.6": handlers_v16.PRE_BOOT_ACTIONS, "2.0.1": handlers_v201.PRE_BOOT_ACTIONS,
                    "2.1": handlers_v21.PRE_BOOT_ACTIONS}


class CallOutcome(msgspec.Struct):  # one per CALL: a Struct, as framing.Call
    """The answer to one CALL and the events that must be durable before it is sent."""

    action: str
    frame: str
    events: list[Event] = msgspec.field(default_factory=list)
    error_code: str | None = None
    tolerated: bool = False


class OcppSession:
    def __init__(self, *, state: ProtocolState, services: Services, validate_responses: bool = False) -> None:
        self.state = state
        self.services = services
        self._handlers = HANDLERS[state.version]
        self._known = known_actions(state.version)
        self._validate_responses = validate_responses

    def parse(self, raw: str | bytes) -> Message:
        """Classify a frame; raises FrameRejected (answer it) or FrameIgnored (do not)."""
        typed = typed_call(raw, self.state.version)  # a steady 1.6 CALL, its schema checked; else None
        if typed is not None:
            return typed
        msg = parse_frame(raw, self.state.version)
        if isinstance(raw, bytes) and not self.state.tolerant and isinstance(msg, Call):
            # OCPP-J frames are text frames (1.6J §4.1.2; 2.0.1 Part 4 §4.1.2); a tolerant
            # charger's binary CALL is read like a text one.
            raise FrameRejected(RpcFrameworkError("OCPP-J messages are text frames, not binary"), msg.message_id)
        return msg

    def not_durable(self, call: Call) -> CallOutcome:
        """The answer when a CALL's events could not be made durable: InternalError, so that the
        charger sends it again (R41 [1.6 §3.7.1, 2.0.1 E13]); data is never acknowledged without being stored."""
        error = InternalError("the data could not be stored; retry later")
        return CallOutcome(call.action, self.error_frame(call.message_id, error), error_code=error.code)

    def prepare_command(self, action: str, payload: dict[str, Any]) -> None:
        """Decide whether an operator command may be sent now (CommandRefused if not) and note what
        it asks for: a message the CSMS triggered is allowed even before Accepted (2.0.1 B02.FR.09, 1.6J
        errata 3.10; R33)."""
        commands.check_command(version=self.state.version, registration=self.state.registration, action=action,
                               payload=payload)
        if action in ("TriggerMessage", "ExtendedTriggerMessage"):
            self.state.triggered[str(payload.get("requestedMessage", ""))[:64]] = None

    def error_frame(self, message_id: str, error: OcppError) -> str:
        return build_call_error(message_id, error, self.state.version)

    async def handle_call(self, call: Call, received_at: datetime) -> CallOutcome:
        version = self.state.version
        try:
            handler = self._check(call)
            tolerated = False
            try:
                if not call.schema_checked:
                    validate(version, call.action, call.payload)
            except OcppError as exc:
                if not self.state.tolerant:
                    raise
                tolerated = True
                logger.info("%s %s violates the schema (tolerated): %s", self.state.charge_point_id,
                            call.action, exc.description)
            ctx = Context(state=self.state, services=self.services, received_at=received_at,
                          message_id=call.message_id)
            try:
                reply = await handler(ctx, call.payload)
            except OcppError:
                raise
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                if not tolerated:
                    raise
                # A tolerated payload the handler cannot read at all: refuse it after all.
                raise InternalError(f"cannot interpret {call.action}: {type(exc).__name__}") from exc
            # A 2.1 SEND has no response schema: it is never answered (2.1 Part 4 §4.2.4).
            is_send = version == "2.1" and call.action in handlers_v21.SEND_ACTIONS
            if self._validate_responses and not is_send:
                try:
                    validate(version, call.action, reply.payload, response=True)
                except OcppError as exc:
                    # Our own answer is wrong: that is our failure, not the charger's (ref. §2.5).
                    logger.error("response to %s fails its schema: %s", call.action, exc.description)
                    raise InternalError("the central system built an invalid response") from None
            events = list(reply.events)
            if tolerated:
                events.append(log_event(ctx, "SchemaViolation", {"action": call.action, "payload": call.payload}))
            return CallOutcome(call.action, build_call_result(call.message_id, reply.payload), events,
                               tolerated=tolerated)
        except OcppError as exc:
            return CallOutcome(call.action, self.error_frame(call.message_id, exc), error_code=exc.code)
        except Exception:
            logger.exception("handler for %s from %s failed", call.action, self.state.charge_point_id)
            error = InternalError("the central system failed to process the message")
            return CallOutcome(call.action, self.error_frame(call.message_id, error), error_code=error.code)

    def _check(self, call: Call) -> Handler:
        handler = self._handlers.get(call.action)
        if handler is None:
            version = self.state.version
            if call.action in self._known:
                if call.action in directions.charger_actions(version):
                    raise NotSupportedAction(f"{call.action} is not supported by this CSMS (OCPP {version})")
                raise NotSupportedAction(f"{call.action} is sent by the CSMS to a charging station, not by a "
                                         f"charging station (OCPP {version})")
            since = directions.introduced_in(call.action)
            if since is not None:
                raise NotImplementedAction(f"{call.action} is not an OCPP {version} action "
                                           f"(it is defined in OCPP {since})")
            raise NotImplementedAction(f"unknown action {call.action[:64]!r} (OCPP {version})")
        if (self.state.registration != "Accepted" and call.action not in PRE_BOOT_ACTIONS[self.state.version]
                and call.action not in self.state.triggered):
            raise SecurityError(f"{call.action} before BootNotification was accepted "
                                f"(registration is {self.state.registration})")
        return handler


