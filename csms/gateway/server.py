"""The OCPP websocket server: handshakes, the live connections, connection tasks.

This module only moves data and owns tasks; what a frame means is decided by the
protocol core (``csms.ocpp``). Identity comes from the last path segment,
percent-decoded (OCPP-J 1.6 §3.1.1, 2.0.1 Part 4 §3.1.1); who may connect is decided
before the upgrade by ``csms.gateway.handshake``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.common.log_budget import BudgetedLog
from csms.gateway.connection import ChargerConnection
from csms.gateway.fleet import FleetDirectory
from csms.gateway.handshake import HandshakePolicy
from csms.gateway.keepalive import Keepalive
from csms.gateway.live import Admission, Admissions, LiveConnections
from csms.gateway.metrics import GatewayMetrics
from csms.gateway.remote import CommandRouter
from csms.gateway.tls_peer import client_certificate_cn, client_certificate_der
from csms.ocpp.context import ProtocolState, Services
from csms.ocpp.identity import SUPPORTED_SUBPROTOCOLS, choose_subprotocol, ocpp_version_of, parse_charge_point_id
from csms.ocpp.session import OcppSession
from csms.security.secret import CredentialSecret
from schemas.bus import Bus, BusError
from schemas.events import ConnectionEvent

logger = logging.getLogger(__name__)
_NO_HEADERS = Headers()   # shared by every connection after its handshake, never written to

# Deflate without context takeover: 2.0.1 Part 4 §3.3 requires permessage-deflate support,
# but zlib state kept between messages costs ~30 KiB per connection even with 2 KiB windows
# (docs/benchmarks.md). Without takeover each message is compressed on its own (a 10-sample
# MeterValues: ~1.5 KiB → ~0.3 KiB instead of ~0.05 KiB) and an idle connection holds no zlib
# state, which is what lets one process hold tens of thousands of chargers.
DEFLATE_WINDOW_BITS = 11
DEFLATE_MEM_LEVEL = 4
DEFLATE_NO_CONTEXT_TAKEOVER = True

# Share of the shutdown timeout a rate-limited drain may spend spreading its closes; the rest is
# for the last closes (all at once) and their handlers recording the disconnects.
DRAIN_SHARE_OF_SHUTDOWN = 0.5


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    ping_interval_s: float
    ping_timeout_s: float
    max_frame_bytes: int
    open_timeout_s: float
    call_timeout_s: float
    max_queued_calls: int
    max_queued_commands: int
    command_connect_wait_s: float
    connection_drain_timeout_s: float
    rejected_frame_log_interval_s: float
    rejected_frame_log_burst: int
    websocket_max_queue_frames: int
    max_connections: int


class Gateway:
    """Own the websocket server and every connection task."""

    def __init__(self, *, host: str, port: int, base_path: str, node_id: str, bus: Bus, metrics: GatewayMetrics,
                 policy: HandshakePolicy, services: Services, limits: GatewayLimits,
                 ssl_context: ssl.SSLContext | None = None,
                 tolerant_models: frozenset[tuple[str, str]] = frozenset(),
                 validate_responses: bool = False,
                 connection_epochs: Callable[[str], Awaitable[int | None]] | None = None,
                 reuse_port: bool = False, drain_rate_per_s: float = 0.0) -> None:
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
        # Workers of one host share the port (SO_REUSEPORT): the kernel spreads new connections over them.
        self._reuse_port = reuse_port
        self._drain_rate_per_s = drain_rate_per_s
        self.live = LiveConnections()
        self.draining = False
        # A command for a charger mid-handshake waits for it (bounded) instead of a 409.
        self._admissions = Admissions()
        # A handshake flood under the rate limit must not write one INFO line per attempt.
        self._refusals = BudgetedLog(logger, "refused handshake", summary="{n} more handshakes refused",
                                     interval_s=limits.rejected_frame_log_interval_s,
                                     per_interval=limits.rejected_frame_log_burst)
        self._closers: set[asyncio.Task[None]] = set()
        self._keepalive: asyncio.Task[None] | None = None
        self._server: Server | None = None
        # The fleet registry and commands across nodes (fleet.py, remote.py); None: this process alone.
        self.fleet: FleetDirectory | None = None
        self.router: CommandRouter | None = None
        # Told of every admitted client certificate (profile 3), so that a factory certificate's expiry is known.
        self.client_certificate_seen: Callable[[str, bytes], Awaitable[None]] | None = None

    def attach_fleet(self, fleet: FleetDirectory, router: CommandRouter) -> None:
        self.fleet, self.router = fleet, router

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        # Refuses to start when the database's HMAC credentials need a secret this process lacks (item 6).
        await self._policy.start()
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
            ping_interval=None,   # one task pings every connection (csms.gateway.keepalive)
            open_timeout=self._limits.open_timeout_s,
            max_size=self._limits.max_frame_bytes,
            max_queue=self._limits.websocket_max_queue_frames,
            server_header=None,
            reuse_port=self._reuse_port,
        )
        if self._limits.ping_interval_s > 0:
            limits = self._limits
            keepalive = Keepalive(sockets=lambda: [c.socket for c in self.live.all()],
                                  ping_interval_s=limits.ping_interval_s, ping_timeout_s=limits.ping_timeout_s)
            self._keepalive = asyncio.create_task(keepalive.run(), name="ocpp-keepalive")
        logger.info("OCPP websocket server listening on %s://%s:%d%s/<chargePointId>",
                    "wss" if self._ssl else "ws", self._host, self.port, self._base_path.rstrip("/"))

    def _select_subprotocol(self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
                            ) -> Subprotocol | None:
        # Returning None completes the handshake without a subprotocol; the handler then
        # closes, as OCPP-J requires (1.6J §3.2; 2.0.1 Part 4 §3.2) instead of an HTTP 400.
        chosen = choose_subprotocol(list(subprotocols))
        return Subprotocol(chosen) if chosen else None

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = parse_charge_point_id(request.path, self._base_path)
        if cp_id is None:
            self._metrics.handshake_failures.labels("bad_path").inc()
            return _http_error(connection, http.HTTPStatus.NOT_FOUND, "unknown path or invalid charge point id")
        if len(self.live) >= self._limits.max_connections:
            # Full (open files): the charger retries and, behind SO_REUSEPORT or a balancer, lands elsewhere.
            self._metrics.handshake_failures.labels("at_capacity").inc()
            return _http_error(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "at capacity", {"Retry-After": "5"})
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
            self._refusals.event(f"{cp_id} from {source}: {verdict.reason}")
            headers = dict(verdict.headers)
            if verdict.status == http.HTTPStatus.UNAUTHORIZED:
                headers.setdefault("WWW-Authenticate", 'Basic realm="OCPP", charset="UTF-8"')  # RFC 7617 §2
            return _http_error(connection, verdict.status, verdict.message, headers)
        # From here on the charger is mid-handshake: commands for it wait for this connection.
        admission = Admission(cp_id, verdict, None, time.monotonic() + self._limits.open_timeout_s + 1.0)
        self._admissions.admit(id(connection), admission)
        if self._connection_epochs is not None:
            try:
                # Allocated before the upgrade, so that the handler has it without waiting (item 2).
                admission.connection_epoch = await self._connection_epochs(cp_id)
            except Exception:
                logger.exception("connection epoch for %s not allocated", cp_id)
                self._admissions.drop(id(connection), admission)
                self._metrics.handshake_failures.labels("internal_error").inc()
                return _http_error(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "try again later",
                                   {"Retry-After": "1"})
        if self.client_certificate_seen is not None and (der := client_certificate_der(connection)) is not None:
            await self.client_certificate_seen(cp_id, der)   # never raises: the desk logs its own failures
        return None

    async def live_connection(self, charge_point_id: str) -> ChargerConnection | None:
        """The charger's usable connection in this process, or None.

        A charger whose handshake was admitted but whose websocket is not registered yet (it is
        opening right now, possibly replacing an older socket) is waited for, at most
        ``command_connect_wait_s``: its socket is open or about to be (issue 11 item 3).
        """
        await self._admissions.wait(charge_point_id, self._limits.command_connect_wait_s)
        conn = self.live.get(charge_point_id)
        return conn if conn is not None and conn.usable else None

    def connections(self) -> list[ChargerConnection]:
        """Every charger connected to this process."""
        return self.live.all()

    def close_older(self, charge_point_id: str, below_epoch: int) -> bool:
        """Close the charger's socket here if older than ``below_epoch`` (it has a newer one elsewhere, R28)."""
        conn = self.live.get(charge_point_id)
        if conn is None or conn.connection_epoch is None or conn.connection_epoch >= below_epoch:
            return False
        self.live.remove(conn)
        self._close_replaced(conn)
        return True

    async def _prime_open_transactions(self, state: ProtocolState) -> None:
        """Without this, events after a reconnect that omit ``evse`` land on EVSE 0 (flagged)."""
        for uid, evse in (await self._services.open_transactions(state.charge_point_id)).items():
            state.remember_tx_evse(uid, evse)

    async def _handle(self, websocket: ServerConnection) -> None:
        admission = self._admissions.take(id(websocket))
        cp_id = parse_charge_point_id(websocket.request.path if websocket.request else "", self._base_path)
        if admission is None or cp_id != admission.charge_point_id or admission.verdict.record is None:
            if admission is not None:
                self._admissions.done(admission)
            await websocket.close(1008, "not admitted")
            return
        if websocket.subprotocol is None or websocket.request is None:
            self._admissions.done(admission)
            self._metrics.handshake_failures.labels("no_subprotocol").inc()
            await websocket.close(1002, "no acceptable OCPP subprotocol offered")
            return
        version = ocpp_version_of(websocket.subprotocol)
        # The handshake's headers (~5 KiB a connection, issue 15) are not needed again. The request itself
        # stays: websockets reads the next event as a request while it is None.
        websocket.request.headers, websocket.response = _NO_HEADERS, None
        epoch = admission.connection_epoch
        record = admission.verdict.record
        state = ProtocolState(charge_point_id=cp_id, version=version, registration=record.registration_status,
                              tolerant=record.tolerant or (record.vendor_model in self._tolerant_models),
                              node_id=self._node_id)
        session = OcppSession(state=state, services=self._services, validate_responses=self._validate_responses)
        conn = ChargerConnection(
            socket=websocket, session=session, bus=self._bus, metrics=self._metrics,
            call_timeout_s=self._limits.call_timeout_s, max_queued_calls=self._limits.max_queued_calls,
            max_queued_commands=self._limits.max_queued_commands,
            drain_timeout_s=self._limits.connection_drain_timeout_s,
            rejected_frame_log_interval_s=self._limits.rejected_frame_log_interval_s,
            rejected_frame_log_burst=self._limits.rejected_frame_log_burst,
            remote=str(websocket.remote_address[0]) if websocket.remote_address else "", connection_epoch=epoch)
        # Registered before any await: a charger whose socket is open is reachable at once.
        old = self.live.add(conn)
        if self.fleet is not None:
            self.fleet.registered(conn)  # queued; written to the fleet registry by its own task
        self._admissions.done(admission)
        self._metrics.connections_opened.labels(version).inc()
        self._metrics.connected.labels(version).inc()
        reason = "closed"
        try:
            if old is not None:
                # R28 (derived; the spec is silent): the newer authenticated connection wins; the old socket is
                # usually half-open, and its close may take the whole close timeout: it must not delay this one.
                logger.info("charge point %s reconnected; closing its previous connection", cp_id)
                self._close_replaced(old)
            # At the time the registry row has: a node-loss "disconnected" is never before it.
            await self._record(cp_id, "connected", "", version, epoch, at=conn.connected_at)
            if version != "1.6":
                # Before the first frame is read; without it, events after a reconnect that
                # omit ``evse`` land on EVSE 0 (flagged; E01.FR.16).
                await self._prime_open_transactions(state)
            await conn.run()
        except ConnectionClosed as exc:
            reason = "closed_by_peer" if exc.rcvd is not None else "connection_lost"
        except Exception:
            reason = "error"
            logger.exception("connection handler for %s failed", cp_id)
        finally:
            conn.outgoing.close()
            if websocket.close_code == 1001 and reason == "closed":
                reason = "server_shutdown"
            self._metrics.connected.labels(version).dec()
            self._metrics.connections_closed.labels(reason).inc()
            self.live.remove(conn)
            if self.fleet is not None:
                self.fleet.unregistered(conn)
            await self._record(cp_id, "disconnected", reason, version, epoch)

    def _close_replaced(self, old: ChargerConnection) -> None:
        old.outgoing.close()
        task = asyncio.create_task(old.socket.close(1000, "replaced by a new connection"),
                                   name=f"ocpp-close-replaced-{old.charge_point_id}")
        self._closers.add(task)
        task.add_done_callback(self._closer_done)

    def _close_going_away(self, conn: ChargerConnection, closing: set[int]) -> None:
        if id(conn) in closing:
            return
        closing.add(id(conn))
        task = asyncio.create_task(conn.socket.close(1001, "server shutting down"),
                                   name=f"ocpp-close-{conn.charge_point_id}")
        self._closers.add(task)
        task.add_done_callback(self._closer_done)

    def _closer_done(self, task: asyncio.Task[None]) -> None:
        self._closers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("closing a replaced connection failed: %s", task.exception())

    async def _record(self, cp_id: str, event: str, reason: str, version: str, epoch: int | None,
                      at: datetime | None = None) -> None:
        now = datetime.now(UTC)
        ev = ConnectionEvent(charge_point_id=cp_id, received_at=now, time=at or now, event=event,  # type: ignore[arg-type]
                             reason=reason, node_id=self._node_id, ocpp_version=version, connection_epoch=epoch)
        try:
            await self._bus.publish([ev])
        except BusError as exc:
            logger.warning("could not record %s of %s: %s", event, cp_id, exc)

    @property
    def credentials(self) -> CredentialSecret:
        """The secret generated charger passwords are stored under (for registrations through the API)."""
        return self._policy.credentials

    def forget_credentials(self, charge_point_id: str) -> None:
        """Drop cached credential checks after the charger's credentials changed."""
        self._policy.verifier.forget(charge_point_id)

    async def close(self, *, timeout_s: float) -> None:
        """Stop accepting, close every connection with 1001 (going away), wait for handlers; all
        within ``timeout_s``.

        With ``drain_rate_per_s`` the closes are spread, at most that many per second, over at most
        half of ``timeout_s`` (a rolling restart: the chargers reconnect to the other nodes with
        their own jittered back-off, 2.0.1 B10 RetryBackOff*, instead of all at the same moment);
        what is still open then is closed at once, and the handlers get the rest of ``timeout_s``
        to record their disconnects.
        """
        if self._server is None:
            return
        self.draining = True   # /readyz answers 503 from now on: load balancers stop sending chargers here
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._server.close(close_connections=False)
        closing: set[int] = set()
        try:
            if self._drain_rate_per_s > 0:
                drain_until = loop.time() + timeout_s * DRAIN_SHARE_OF_SHUTDOWN
                for conn in self.live.all():
                    now = loop.time()
                    if now >= drain_until:
                        break
                    if self.live.get(conn.charge_point_id) is conn:  # not gone or replaced meanwhile
                        self._close_going_away(conn, closing)
                        await asyncio.sleep(min(1.0 / self._drain_rate_per_s, drain_until - now))
            for conn in self.live.all():
                self._close_going_away(conn, closing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), max(0.0, deadline - loop.time()))
        finally:  # also when the caller's own timeout for this step cancels us first
            for task in [*self._closers, *([self._keepalive] if self._keepalive else [])]:
                task.cancel()
            if self._closers or self._keepalive:
                await asyncio.wait([*self._closers, *([self._keepalive] if self._keepalive else [])])
            self._policy.close()   # the KDF threads: no handshake can need them any more
            self._refusals.flush()
            self._server = None


def _http_error(connection: ServerConnection, status: http.HTTPStatus, text: str,
                headers: dict[str, str] | None = None) -> Response:
    response = connection.respond(status, text + "\n")
    if headers:
        for k, v in headers.items():
            response.headers[k] = v
    return response
