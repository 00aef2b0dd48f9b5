"""The live connections of this process, and the handshakes admitted but not yet open.

A new connection of a charger replaces its old one (R28, derived: the newer authenticated
connection wins, the old socket is usually half-open). A command for a charger whose
handshake was admitted but whose websocket is not registered yet waits for it, bounded
(``command_connect_wait_s``), instead of a 409 (issue 11 item 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from csms.ocpp.types import ChargePointId

if TYPE_CHECKING:
    from csms.gateway.connection import ChargerConnection
    from csms.gateway.handshake import HandshakeVerdict


class LiveConnections:
    """This process's chargers with an open websocket, by charge point id."""

    def __init__(self) -> None:
        self._by_id: dict[ChargePointId, ChargerConnection] = {}

    def add(self, conn: ChargerConnection) -> ChargerConnection | None:
        """Register ``conn``; return the connection it replaces, if any."""
        old = self._by_id.get(conn.charge_point_id)
        self._by_id[conn.charge_point_id] = conn
        return old

    def remove(self, conn: ChargerConnection) -> bool:
        """Unregister ``conn`` only if it is still the registered one (never the replacement)."""
        if self._by_id.get(conn.charge_point_id) is conn:
            del self._by_id[conn.charge_point_id]
            return True
        return False

    def get(self, charge_point_id: str) -> ChargerConnection | None:
        return self._by_id.get(ChargePointId(charge_point_id))

    def all(self) -> list[ChargerConnection]:
        return list(self._by_id.values())

    def ids(self) -> set[str]:
        return set(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)


@dataclass(slots=True, eq=False)
class Admission:
    """A handshake admitted by the policy whose websocket is not registered yet."""

    charge_point_id: ChargePointId
    verdict: HandshakeVerdict
    connection_epoch: int | None
    expires_at: float                     # monotonic; the handshake is over by then, one way or another
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Admissions:
    """Admitted handshakes by socket, oldest first, and the newest one per charger."""

    def __init__(self) -> None:
        self._by_socket: OrderedDict[int, Admission] = OrderedDict()
        self._newest: dict[ChargePointId, Admission] = {}

    def admit(self, socket_key: int, admission: Admission) -> None:
        self._expire()
        self._by_socket[socket_key] = admission
        self._newest[admission.charge_point_id] = admission  # the newest handshake wins (R28)

    def take(self, socket_key: int) -> Admission | None:
        """The admission of a socket whose handler starts (it is no longer waited for as such)."""
        return self._by_socket.pop(socket_key, None)

    def drop(self, socket_key: int, admission: Admission) -> None:
        self._by_socket.pop(socket_key, None)
        self.done(admission)

    def done(self, admission: Admission) -> None:
        """The handshake ended (registered, refused or failed): whoever waits for it goes on."""
        if self._newest.get(admission.charge_point_id) is admission:
            del self._newest[admission.charge_point_id]
        admission.ready.set()

    async def wait(self, charge_point_id: str, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, for the charger's handshake in progress (if any) to end."""
        admission = self._newest.get(ChargePointId(charge_point_id))
        if admission is not None and admission.expires_at > time.monotonic():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(admission.ready.wait(), timeout_s)

    def _expire(self) -> None:
        # A handshake that failed after admission (the client left, open_timeout_s) never reaches
        # the handler; its entry goes once the handshake's deadline has passed.
        now = time.monotonic()
        while self._by_socket:
            key, admission = next(iter(self._by_socket.items()))
            if admission.expires_at > now:
                break
            del self._by_socket[key]
            self.done(admission)
