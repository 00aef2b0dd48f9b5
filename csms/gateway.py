"""The OCPP websocket server: handshakes, the connection registry, connection tasks.

This module only moves data and owns tasks; what a frame means is decided by the
protocol core (``csms.ocpp``). Identity comes from the last path segment,
percent-decoded (OCPP-J 1.6 §3.1.1, 2.0.1 Part 4 §3.1.1); who may connect is decided
before the upgrade by ``csms.handshake``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote

import asyncpg
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.connection import ChargerConnection
from csms.handshake import HandshakePolicy, HandshakeVerdict
from csms.metrics import GatewayMetrics
from csms.ocpp.context import ChargePointId, ProtocolState, Services
from csms.ocpp.session import OcppSession
from schemas.bus import Bus, BusError
from schemas.events import ConnectionEvent

logger = logging.getLogger(__name__)

# OCPP-J subprotocol names (1.6J §3.1.2; 2.0.1 Part 4 §3.1.2; 2.1 Part 4 §3.1.2).
SUPPORTED_SUBPROTOCOLS: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")
MAX_ID_LENGTH = 48  # 2.0.1 identifierString (Part 4 §3.1.1); also the 1.6 limit we apply

# Deflate without context takeover: 2.0.1 Part 4 §3.3 requires permessage-deflate support,
# but zlib state kept between messages costs ~30 KiB per connection even with 2 KiB windows
# (docs/benchmarks.md). Without takeover each message is compressed on its own (a 10-sample
# MeterValues: ~1.5 KiB → ~0.3 KiB instead of ~0.05 KiB) and an idle connection holds no zlib
# state, which is what lets one process hold tens of thousands of chargers.
DEFLATE_WINDOW_BITS = 11
DEFLATE_MEM_LEVEL = 4
DEFLATE_NO_CONTEXT_TAKEOVER = True


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


def client_certificate_cn(connection: ServerConnection) -> str | None:
    """The subject commonName of a verified client certificate (security profile 3)."""
    transport = connection.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


_ALLOCATE_EPOCH = "UPDATE charge_points SET connection_epoch = connection_epoch + 1 WHERE id = $1 " \
                  "RETURNING connection_epoch"


async def allocate_connection_epoch(pool: asyncpg.Pool, charge_point_id: str) -> int | None:
    """The charger's next connection epoch, allocated by the database (None: no such row).

    One counter per charger in ``charge_points``, shared by every node on the database: a
    newer admitted websocket always has a higher epoch, so the events of a replaced socket
    (R28) can be told from the live one's whatever order they are stored in.
    """
    epoch = await pool.fetchval(_ALLOCATE_EPOCH, charge_point_id)
    return int(epoch) if epoch is not None else None


@dataclass(slots=True)
class LiveConnection:
    """One charger's websocket, as the registry knows it."""

    charge_point_id: str
    ocpp_version: str
    websocket: ServerConnection
    connected_at: datetime
    remote: str
    charger: ChargerConnection | None = field(default=None)
    connection_epoch: int | None = None

    @property
    def usable(self) -> bool:
        """Commands can still be sent on it (it has not ended or been replaced)."""
        return self.charger is not None and not self.charger.outgoing.closed


@dataclass(slots=True, eq=False)
class Admission:
    """A handshake admitted by the policy whose websocket is not in the registry yet."""

    charge_point_id: str
    verdict: HandshakeVerdict
    connection_epoch: int | None
    expires_at: float                     # monotonic; the handshake is over by then, one way or another
    ready: asyncio.Event = field(default_factory=asyncio.Event)


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


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    ping_interval_s: float
    ping_timeout_s: float
    max_frame_bytes: int
    open_timeout_s: float
    call_timeout_s: float
    heartbeat_interval_s: int
    max_queued_calls: int
    max_queued_commands: int
    command_connect_wait_s: float = 2.0
    connection_drain_timeout_s: float = 10.0
    rejected_frame_log_interval_s: float = 60.0
    rejected_frame_log_burst: int = 5


class Gateway:
    """Own the websocket server and every connection task."""

    def __init__(self, *, host: str, port: int, base_path: str, node_id: str, bus: Bus, metrics: GatewayMetrics,
                 policy: HandshakePolicy, services: Services, limits: GatewayLimits,
                 ssl_context: ssl.SSLContext | None = None,
                 tolerant_models: frozenset[tuple[str, str]] = frozenset(),
                 validate_responses: bool = False,
                 connection_epochs: Callable[[str], Awaitable[int | None]] | None = None) -> None:
        self._host = host
        self._port = port
        self._base_path = base_path
        self._node_id = node_id
        self._bus = bus
        self._metrics = metrics
        self._policy = policy
        self._services = services
        self._limits = limits
        self._ssl = ssl_context
        self._tolerant_models = tolerant_models
        self._validate_responses = validate_responses
        self._connection_epochs = connection_epochs
        self.registry = ConnectionRegistry()
        # Admitted handshakes by id(connection), oldest first, and the newest one per charger:
        # a command for a charger mid-handshake waits for it (bounded) instead of a 409.
        self._admissions: OrderedDict[int, Admission] = OrderedDict()
        self._handshaking: dict[str, Admission] = {}
        self._closers: set[asyncio.Task[None]] = set()
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
            ssl=self._ssl,
            process_request=self._process_request,
            subprotocols=[Subprotocol(p) for p in SUPPORTED_SUBPROTOCOLS],
            select_subprotocol=self._select_subprotocol,
            compression=None,
            extensions=[ServerPerMessageDeflateFactory(
                server_no_context_takeover=DEFLATE_NO_CONTEXT_TAKEOVER,
                client_no_context_takeover=DEFLATE_NO_CONTEXT_TAKEOVER,
                server_max_window_bits=DEFLATE_WINDOW_BITS, client_max_window_bits=DEFLATE_WINDOW_BITS,
                compress_settings={"memLevel": DEFLATE_MEM_LEVEL})],
            ping_interval=self._limits.ping_interval_s or None,
            ping_timeout=self._limits.ping_timeout_s or None,
            open_timeout=self._limits.open_timeout_s,
            max_size=self._limits.max_frame_bytes,
            max_queue=4,
            server_header=None,
        )
        logger.info("OCPP websocket server listening on %s://%s:%d%s/<chargePointId>",
                    "wss" if self._ssl else "ws", self._host, self.port, self._base_path.rstrip("/"))

    def _select_subprotocol(self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
                            ) -> Subprotocol | None:
        # Returning None completes the handshake without a subprotocol; the handler then
        # closes, as OCPP-J requires (1.6J §3.2; 2.0.1 Part 4 §3.2) instead of an HTTP 400.
        chosen = choose_subprotocol(list(subprotocols), SUPPORTED_SUBPROTOCOLS)
        return Subprotocol(chosen) if chosen else None

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = parse_charge_point_id(request.path, self._base_path)
        if cp_id is None:
            self._metrics.handshake_failures.labels("bad_path").inc()
            return _http_error(connection, http.HTTPStatus.NOT_FOUND, "unknown path or invalid charge point id")
        source = str(connection.remote_address[0]) if connection.remote_address else ""
        try:
            verdict = await self._policy.check(charge_point_id=cp_id, source=source,
                                               authorization=request.headers.get_all("Authorization"),
                                               client_cert_cn=client_certificate_cn(connection))
        except Exception:
            logger.exception("handshake check for %s failed", cp_id)
            self._metrics.handshake_failures.labels("internal_error").inc()
            return _http_error(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "try again later",
                               {"Retry-After": "1"})
        if not verdict.admitted:
            assert verdict.status is not None
            self._metrics.handshake_failures.labels(verdict.reason).inc()
            logger.info("refused %s from %s: %s", cp_id, source, verdict.reason)
            headers = dict(verdict.headers)
            if verdict.status == http.HTTPStatus.UNAUTHORIZED:
                headers.setdefault("WWW-Authenticate", 'Basic realm="OCPP", charset="UTF-8"')  # RFC 7617 §2
            return _http_error(connection, verdict.status, verdict.message, headers)
        # From here on the charger is mid-handshake: commands for it wait for this connection.
        admission = Admission(cp_id, verdict, None, time.monotonic() + self._limits.open_timeout_s + 1.0)
        self._admit(connection, admission)
        if self._connection_epochs is not None:
            try:
                # Allocated before the upgrade, so that the handler has it without waiting (item 2).
                admission.connection_epoch = await self._connection_epochs(cp_id)
            except Exception:
                logger.exception("connection epoch for %s not allocated", cp_id)
                self._admissions.pop(id(connection), None)
                self._done_handshaking(admission)
                self._metrics.handshake_failures.labels("internal_error").inc()
                return _http_error(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "try again later",
                                   {"Retry-After": "1"})
        return None

    def _admit(self, connection: ServerConnection, admission: Admission) -> None:
        self._expire_admissions()
        self._admissions[id(connection)] = admission
        self._handshaking[admission.charge_point_id] = admission  # the newest handshake wins (R28)

    def _expire_admissions(self) -> None:
        # A handshake that failed after admission (the client left, open_timeout_s) never reaches
        # _handle; its entry goes once the handshake's deadline has passed.
        now = time.monotonic()
        while self._admissions:
            key, admission = next(iter(self._admissions.items()))
            if admission.expires_at > now:
                break
            del self._admissions[key]
            self._done_handshaking(admission)

    def _done_handshaking(self, admission: Admission) -> None:
        if self._handshaking.get(admission.charge_point_id) is admission:
            del self._handshaking[admission.charge_point_id]
        admission.ready.set()

    async def live_connection(self, charge_point_id: str) -> LiveConnection | None:
        """The charger's usable connection on this node, or None.

        A charger whose handshake was admitted but whose websocket is not registered yet (it is
        opening right now, possibly replacing an older socket) is waited for, at most
        ``command_connect_wait_s``: its socket is open or about to be (item 3 of issue 11).
        """
        admission = self._handshaking.get(charge_point_id)
        if admission is not None and admission.expires_at > time.monotonic():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(admission.ready.wait(), self._limits.command_connect_wait_s)
        conn = self.registry.get(charge_point_id)
        return conn if conn is not None and conn.usable else None

    async def _prime_open_transactions(self, state: ProtocolState) -> None:
        """Without this, events after a reconnect that omit ``evse`` land on EVSE 0 (flagged)."""
        for uid, evse in (await self._services.open_transactions(state.charge_point_id)).items():
            state.remember_tx_evse(uid, evse)

    async def _handle(self, websocket: ServerConnection) -> None:
        admission = self._admissions.pop(id(websocket), None)
        cp_id = parse_charge_point_id(websocket.request.path if websocket.request else "", self._base_path)
        if admission is None or cp_id != admission.charge_point_id or admission.verdict.record is None:
            if admission is not None:
                self._done_handshaking(admission)
            await websocket.close(1008, "not admitted")
            return
        if websocket.subprotocol is None:
            self._done_handshaking(admission)
            self._metrics.handshake_failures.labels("no_subprotocol").inc()
            await websocket.close(1002, "no acceptable OCPP subprotocol offered")
            return
        version = ocpp_version_of(websocket.subprotocol)
        remote = str(websocket.remote_address[0]) if websocket.remote_address else ""
        epoch = admission.connection_epoch
        conn = LiveConnection(cp_id, version, websocket, datetime.now(UTC), remote, connection_epoch=epoch)
        record = admission.verdict.record
        state = ProtocolState(charge_point_id=ChargePointId(cp_id), version=version,
                              registration=record.registration_status,
                              heartbeat_interval_s=self._limits.heartbeat_interval_s,
                              tolerant=record.tolerant or (record.vendor_model in self._tolerant_models),
                              node_id=self._node_id)
        session = OcppSession(state=state, services=self._services, validate_responses=self._validate_responses)
        charger = ChargerConnection(
            socket=websocket, session=session, bus=self._bus, metrics=self._metrics,
            call_timeout_s=self._limits.call_timeout_s, max_queued_calls=self._limits.max_queued_calls,
            max_queued_commands=self._limits.max_queued_commands,
            drain_timeout_s=self._limits.connection_drain_timeout_s,
            rejected_frame_log_interval_s=self._limits.rejected_frame_log_interval_s,
            rejected_frame_log_burst=self._limits.rejected_frame_log_burst)
        conn.charger = charger
        # Registered before any await: a charger whose socket is open is reachable at once.
        old = self.registry.add(conn)
        self._done_handshaking(admission)
        self._metrics.connections_opened.labels(version).inc()
        self._metrics.connected.labels(version).inc()
        reason = "closed"
        try:
            if old is not None:
                # R28: the newer authenticated connection wins; the old socket is usually half-open,
                # and its close may take the whole close timeout: it must not delay this one.
                logger.info("charge point %s reconnected; closing its previous connection", cp_id)
                self._close_replaced(old)
            await self._record(cp_id, "connected", "", version, epoch)
            if version != "1.6":
                # Before the first frame is read; without it, events after a reconnect that
                # omit ``evse`` land on EVSE 0 (flagged).
                await self._prime_open_transactions(state)
            await charger.run()
        except ConnectionClosed as exc:
            reason = "closed_by_peer" if exc.rcvd is not None else "connection_lost"
        except Exception:
            reason = "error"
            logger.exception("connection handler for %s failed", cp_id)
        finally:
            charger.outgoing.close()
            if websocket.close_code == 1001 and reason == "closed":
                reason = "server_shutdown"
            self._metrics.connected.labels(version).dec()
            self._metrics.connections_closed.labels(reason).inc()
            self.registry.remove(conn)
            await self._record(cp_id, "disconnected", reason, version, epoch)

    def _close_replaced(self, old: LiveConnection) -> None:
        if old.charger is not None:
            old.charger.outgoing.close()
        task = asyncio.create_task(old.websocket.close(1000, "replaced by a new connection"),
                                   name=f"ocpp-close-replaced-{old.charge_point_id}")
        self._closers.add(task)
        task.add_done_callback(self._closer_done)

    def _closer_done(self, task: asyncio.Task[None]) -> None:
        self._closers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("closing a replaced connection failed: %s", task.exception())

    async def _record(self, cp_id: str, event: str, reason: str, version: str, epoch: int | None) -> None:
        now = datetime.now(UTC)
        ev = ConnectionEvent(charge_point_id=cp_id, received_at=now, time=now, event=event,  # type: ignore[arg-type]
                             reason=reason, node_id=self._node_id, ocpp_version=version, connection_epoch=epoch)
        try:
            await self._bus.publish([ev])
        except BusError as exc:
            logger.warning("could not record %s of %s: %s", event, cp_id, exc)

    def forget_credentials(self, charge_point_id: str) -> None:
        """Drop cached credential checks after the charger's credentials changed."""
        self._policy.verifier.forget(charge_point_id)

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
        for task in list(self._closers):
            task.cancel()
        if self._closers:
            await asyncio.wait(self._closers)
        self._policy.close()   # the KDF threads: no handshake can need them any more
        self._server = None


def _http_error(connection: ServerConnection, status: http.HTTPStatus, text: str,
                headers: dict[str, str] | None = None) -> Response:
    response = connection.respond(status, text + "\n")
    if headers:
        for k, v in headers.items():
            response.headers[k] = v
    return response
