"""Operator commands to chargers: any CSMS-initiated OCPP call, and version-neutral shortcuts.

A command goes to the charger wherever it is connected: through this node's connection, or over the
broker to the node holding it (``csms.gateway.remote``); the answers are the same either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, status
from pydantic import BaseModel, Field

from csms.api.common import CpId
from csms.common.errors import ChargerBusyError, ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.gateway import remote
from csms.gateway.node_messages import RemoteNodeError
from csms.gateway.outgoing import ChargerCallError
from csms.gateway.remote import Target
from csms.gateway.server import Gateway
from csms.ocpp import commands

_remote_start_ids = itertools.count(1)


class RemoteStartIn(BaseModel):
    evse_id: int = Field(1, ge=1, le=64)
    id_token: str = Field(min_length=1, max_length=36)


class RemoteStopIn(BaseModel):
    transaction_id: str = Field(min_length=1, max_length=36)


class ResetIn(BaseModel):
    hard: bool = False


class AvailabilityIn(BaseModel):
    evse_id: int = Field(0, ge=0, le=64)
    operative: bool


class CommandOut(BaseModel):
    charge_point_id: str
    action: str
    ocpp_version: str
    response: dict[str, Any] = Field(description="the charger's CALLRESULT payload, as received")


async def live(gateway: Gateway | None, cp_id: str) -> Target:
    """Where the charger is connected (this node or another); 409 if nowhere."""
    # A charger mid-handshake here is waited for (at most command_connect_wait_s); one connected
    # nowhere fails at once: a command to an offline charger is never queued.
    try:
        target = await remote.locate(gateway, cp_id) if gateway is not None else None
    except RemoteNodeError as exc:
        raise _unavailable(exc) from None
    if target is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"charge point {cp_id} is not connected to any node")
    return target


async def send(gateway: Gateway | None, cp_id: str, action: str, payload: dict[str, Any]) -> CommandOut:
    """Send one command and return the charger's (schema-validated) answer, or the HTTP error that says why not."""
    target = await live(gateway, cp_id)
    assert gateway is not None
    try:
        response = await remote.send(gateway, target, action, payload)
    except commands.CommandRefused as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except ChargerOfflineError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ChargerTimeoutError as exc:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(exc)) from None
    except ChargerCallError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            {"error": exc.code, "description": exc.description}) from None
    except ChargerBusyError as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from None
    except RemoteNodeError as exc:
        raise _unavailable(exc) from None
    except ChargerCommandError as exc:
        # Any other failure to deliver: the charger is not reachable for this command.
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return CommandOut(charge_point_id=cp_id, action=action, ocpp_version=target.ocpp_version, response=response)


async def send_built(gateway: Gateway | None, cp_id: str,
                     build: Callable[[str], tuple[str, dict[str, Any]]]) -> CommandOut:
    """A version-neutral shortcut: ``build`` maps the charger's version onto (action, payload), or
    refuses (400, with its reason)."""
    try:
        action, payload = build((await live(gateway, cp_id)).ocpp_version)
    except commands.CommandRefused as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return await send(gateway, cp_id, action, payload)


def build_commands_router(*, gateway: Gateway | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["commands"])

    @router.post("/charge-points/{cp_id}/ocpp/{action}")
    async def ocpp_command(cp_id: CpId, action: Annotated[str, Path(max_length=64)],
                           payload: Annotated[dict[str, Any], Body()]) -> CommandOut:
        """Send any CSMS-initiated OCPP call of the charger's version; the charger's answer is returned."""
        return await send(gateway, cp_id, action, payload)

    @router.post("/charge-points/{cp_id}/remote-start")
    async def remote_start(cp_id: CpId, body: RemoteStartIn) -> CommandOut:
        return await send_built(gateway, cp_id, lambda v: commands.remote_start(
            v, evse_id=body.evse_id, id_token=body.id_token, remote_start_id=next(_remote_start_ids)))

    @router.post("/charge-points/{cp_id}/remote-stop")
    async def remote_stop(cp_id: CpId, body: RemoteStopIn) -> CommandOut:
        return await send_built(gateway, cp_id, lambda v: commands.remote_stop(v, transaction_id=body.transaction_id))

    @router.post("/charge-points/{cp_id}/reset")
    async def reset(cp_id: CpId, body: ResetIn) -> CommandOut:
        return await send_built(gateway, cp_id, lambda v: commands.reset(v, hard=body.hard))

    @router.post("/charge-points/{cp_id}/change-availability")
    async def change_availability(cp_id: CpId, body: AvailabilityIn) -> CommandOut:
        return await send_built(gateway, cp_id, lambda v: commands.change_availability(
            v, evse_id=body.evse_id, operative=body.operative))

    return router


def _unavailable(exc: RemoteNodeError) -> HTTPException:
    # The charger is connected, but the node holding it cannot be reached (broker or registry down):
    # not the charger's state, so not 409; the command was not sent.
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"})
