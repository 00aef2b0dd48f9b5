"""The OCPP websocket server: handshakes, connection registry, frame transport.

This module only moves data and owns tasks; what a frame means is decided by the
pure protocol core (``csms.ocpp``). Identity comes from the last path segment,
percent-decoded (OCPP-J 1.6 §3.1.1, 2.0.1 Part 4 §3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.metrics import GatewayMetrics
from schemas.bus import Bus, BusError
from schemas.events import ConnectionEvent

logger = logging.getLogger(__name__)

# OCPP-J subprotocol names (1.6J §3.1.2; 2.0.1 Part 4 §3.1.2; 2.1 Part 4 §3.1.2).
SUPPORTED_SUBPROTOCOLS: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6")
MAX_ID_LENGTH = 48  # 2.0.1 identifierString (Part 4 §3.1.1); also the 1.6 limit we apply

# Reduced deflate windows: 2.0.1 Part 4 §3.3 requires permessage-deflate support, but the
# default 32 KiB windows cost ~48 KiB per connection; 2 KiB windows and memLevel 4 keep a
# connection close to the uncompressed cost while OCPP's small JSON frames still compress.
DEFLATE_WINDOW_BITS = 11
DEFLATE_MEM_LEVEL = 4


def parse_charge_point_id(path: str, base_path: str) -> str | None:
    """The charge point id from a request path, or None if the path is not ours or the id is invalid."""
    path = path.split("?", 1)[0]
    base = base_path.rstrip("/")
    if not path.startswith(base + "/"):
        return None
    raw = path[len(base) + 1:]
    if not raw or "/" in raw:
        return None
    try:
        cp_id = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    if not valid_charge_point_id(cp_id):
        return None
    return cp_id


def valid_charge_point_id(cp_id: str) -> bool:
    # identifierString: at most 48 characters and no ':' since it is the Basic-auth
    # username (2.0.1 Part 4 §3.1.1; 2.1 makes it SHALL NOT). Control characters and
    # '/' cannot be a path segment's meaning; NUL would be rejected by PostgreSQL.
    return (0 < len(cp_id) <= MAX_ID_LENGTH and ":" not in cp_id and "/" not in cp_id
            and cp_id.isprintable())


def choose_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first subprotocol in the *client's* order of preference that we support (2.1 §3.1.2)."""
    for name in offered:
        if name in supported:
            return name
    return None


def ocpp_version_of(subprotocol: str) -> str:
    return subprotocol.removeprefix("ocpp")


@dataclass(slots=True)
class LiveConnection:
    """One charger's websocket, as the registry knows it."""

    charge_point_id: str
    ocpp_version: str
    websocket: ServerConnection
    connected_at: datetime
    remote: str


SessionRunner = Callable[[LiveConnection], Awaitable[None]]


class ConnectionRegistry:
    """Live connections by charge point id. A new connection replaces the old one (R28)."""

    def __init__(self) -> None:
        self._by_id: dict[str, LiveConnection] = {}

    def add(self, conn: LiveConnection) -> LiveConnection | None:
        old = self._by_id.get(conn.charge_point_id)
        self._by_id[conn.charge_point_id] = conn
        return old

    def remove(self, conn: LiveConnection) -> bool:
        """Unregister ``conn`` only if it is still the registered one (never the replacement)."""
        if self._by_id.get(conn.charge_point_id) is conn:
            del self._by_id[conn.charge_point_id]
            return True
        return False

    def get(self, charge_point_id: str) -> LiveConnection | None:
        return self._by_id.get(charge_point_id)

    def all(self) -> list[LiveConnection]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


class Gateway:
    """Own the websocket server and every connection task."""

    def __init__(self, *, host: str, port: int, base_path: str, node_id: str, bus: Bus, metrics: GatewayMetrics,
                 ping_interval_s: float, ping_timeout_s: float, max_frame_bytes: int, open_timeout_s: float,
                 session_runner: SessionRunner | None = None) -> None:
        self._host = host
        self._port = port
        self._base_path = base_path
        self._node_id = node_id
        self._bus = bus
        self._metrics = metrics
        self._ping_interval_s = ping_interval_s or None
        self._ping_timeout_s = ping_timeout_s or None
        self._max_frame_bytes = max_frame_bytes
        self._open_timeout_s = open_timeout_s
        self._session_runner = session_runner or _drain_frames
        self.registry = ConnectionRegistry()
        self._server: Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self._host,
            self._port,
            process_request=self._process_request,
            subprotocols=[Subprotocol(p) for p in SUPPORTED_SUBPROTOCOLS],
            select_subprotocol=self._select_subprotocol,
            compression=None,
            extensions=[ServerPerMessageDeflateFactory(
                server_max_window_bits=DEFLATE_WINDOW_BITS, client_max_window_bits=DEFLATE_WINDOW_BITS,
                compress_settings={"memLevel": DEFLATE_MEM_LEVEL})],
            ping_interval=self._ping_interval_s,
            ping_timeout=self._ping_timeout_s,
            open_timeout=self._open_timeout_s,
            max_size=self._max_frame_bytes,
            # One frame at a time is read by the session; a few more may wait.
            max_queue=16,
            server_header=None,
        )
        logger.info("OCPP websocket server listening on %s:%d%s/<chargePointId>", self._host, self.port,
                    self._base_path.rstrip("/"))

    def _select_subprotocol(self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
                            ) -> Subprotocol | None:
        # Returning None completes the handshake without a subprotocol; the handler then
        # closes, as OCPP-J requires (1.6J §3.2; 2.0.1 Part 4 §3.2) instead of an HTTP 400.
        chosen = choose_subprotocol(list(subprotocols), SUPPORTED_SUBPROTOCOLS)
        return Subprotocol(chosen) if chosen else None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = parse_charge_point_id(request.path, self._base_path)
        if cp_id is None:
            self._metrics.handshake_failures.labels("bad_path").inc()
            return _http_error(connection, http.HTTPStatus.NOT_FOUND, "unknown path or invalid charge point id")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        cp_id = parse_charge_point_id(websocket.request.path if websocket.request else "", self._base_path)
        if cp_id is None:  # process_request already refused these
            await websocket.close(1008, "invalid charge point id")
            return
        if websocket.subprotocol is None:
            self._metrics.handshake_failures.labels("no_subprotocol").inc()
            await websocket.close(1002, "no acceptable OCPP subprotocol offered")
            return
        version = ocpp_version_of(websocket.subprotocol)
        remote = str(websocket.remote_address[0]) if websocket.remote_address else ""
        conn = LiveConnection(cp_id, version, websocket, datetime.now(UTC), remote)
        old = self.registry.add(conn)
        if old is not None:
            # R28: the newer authenticated connection wins; the old socket is usually half-open.
            logger.info("charge point %s reconnected; closing its previous connection", cp_id)
            await old.websocket.close(1000, "replaced by a new connection")
        self._metrics.connections_opened.labels(version).inc()
        self._metrics.connected.labels(version).inc()
        await self._record(cp_id, "connected", "", version)
        reason = "closed"
        try:
            await self._session_runner(conn)
        except ConnectionClosed as exc:
            reason = "closed_by_peer" if exc.rcvd is not None else "connection_lost"
        except Exception:
            reason = "error"
            logger.exception("connection handler for %s failed", cp_id)
        finally:
            self._metrics.connected.labels(version).dec()
            self._metrics.connections_closed.labels(reason).inc()
            self.registry.remove(conn)
            await self._record(cp_id, "disconnected", reason, version)

    async def _record(self, cp_id: str, event: str, reason: str, version: str) -> None:
        now = datetime.now(UTC)
        ev = ConnectionEvent(charge_point_id=cp_id, received_at=now, time=now, event=event,  # type: ignore[arg-type]
                             reason=reason, node_id=self._node_id, ocpp_version=version)
        try:
            await self._bus.publish([ev])
        except BusError as exc:
            logger.warning("could not record %s of %s: %s", event, cp_id, exc)

    async def close(self, *, timeout_s: float) -> None:
        """Stop accepting, close every connection with 1001 (going away), wait for handlers."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        conns = self.registry.all()
        await asyncio.gather(*(c.websocket.close(1001, "server shutting down") for c in conns),
                             return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout_s)
        self._server = None


async def _drain_frames(conn: LiveConnection) -> None:
    """Default runner before a protocol session is attached: read frames until closed."""
    async for _ in conn.websocket:
        pass


def _http_error(connection: ServerConnection, status: http.HTTPStatus, text: str,
                headers: dict[str, str] | None = None) -> Response:
    response = connection.respond(status, text + "\n")
    if headers:
        for k, v in headers.items():
            response.headers[k] = v
    return response

