"""Process composition: which parts run in which role, and the order they stop in.

Start order: database → migrations → bus (and its sink) → OCPP gateway → HTTP.
Stop order (each step bounded by ``shutdown_timeout_s``): stop accepting chargers and
close them with 1001 → HTTP → bus drains what it accepted → ingest sink/worker
flushes → database pool → embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import asyncpg
import uvicorn
from prometheus_client import CollectorRegistry, Info

from csms import __version__
from csms.embedded_pg import EmbeddedPostgres
from csms.errors import ConfigurationError
from csms.gateway import Gateway, GatewayLimits, allocate_connection_epoch
from csms.handshake import HandshakePolicy
from csms.http_api import create_app
from csms.metrics import BusMetrics, GatewayMetrics, register_pool_metrics
from csms.mqtt_bus import MqttBus
from csms.registry import DbServices
from schemas.bus import Bus, InProcessBus
from schemas.migrate import apply_migrations
from schemas.roles import ClosableSink, load_ingest_role
from schemas.settings import Settings, tolerant_pairs

logger = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our loop; signals belong to the entry point, not to uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    def __init__(self, *, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off", access_log=False,
                                server_header=False, timeout_graceful_shutdown=5)
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="http-server")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ConfigurationError("HTTP server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigurationError("HTTP server did not start in time")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None


def load_or_create_api_token(settings: Settings) -> str:
    if settings.api_token:
        return settings.api_token
    path = settings.data_dir / "api-token"
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text("utf-8").strip()
        if token:
            return token
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    logger.info("generated an operator API token into %s", path)
    return token


async def migrate(database_url: str, *, timeout_s: float) -> list[str]:
    conn = await asyncpg.connect(database_url, timeout=timeout_s)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _step(name: str, timeout_s: float) -> AsyncIterator[None]:
    """Run one shutdown step; log and move on if it fails or overruns."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        logger.warning("shutdown step %r did not finish within %.1f s", name, timeout_s)
    except Exception:
        logger.exception("shutdown step %r failed", name)


class CentralSystem:
    """``csms run`` (embedded database, in-process ingest) and ``csms serve`` (gateway + API)."""

    def __init__(self, settings: Settings, *, embedded: bool) -> None:
        self.settings = settings
        self.embedded = embedded
        self.registry = CollectorRegistry()
        self.database_url: str | None = settings.database_url
        self.pg: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.bus: Bus | None = None
        self.sink: ClosableSink | None = None
        self.gateway: Gateway | None = None
        self.http: HttpServer | None = None
        self._worker_stop = asyncio.Event()
        self._worker_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        if self.database_url is None:
            if not self.embedded:
                raise ConfigurationError("csms serve needs --database-url (CSMS_DATABASE_URL)")
            self.pg = EmbeddedPostgres(data_dir=s.data_dir, port=s.embedded_pg_port,
                                       start_timeout_s=s.embedded_pg_start_timeout_s, role="csms run")
            # This process owns the cluster, even one a killed `csms run` left running, and stops
            # it in stop(); a second live `csms run` on the same data directory is refused.
            state = await asyncio.to_thread(self.pg.start, exclusive=True)
            self.database_url = state.url()
        applied = await migrate(self.database_url, timeout_s=s.db_connect_timeout_s)
        if applied:
            logger.info("applied migrations: %s", ", ".join(applied))
        self.pool = await asyncpg.create_pool(self.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max,
                                              timeout=s.db_connect_timeout_s)
        register_pool_metrics(self.registry, self.pool, role="serve")
        role = load_ingest_role()
        if s.mqtt_url:
            self.bus = MqttBus(url=s.mqtt_url, node_id=s.node_id, outbox_dir=s.data_dir / "outbox" / s.node_id,
                               outbox_max_bytes=s.outbox_max_bytes, metrics=BusMetrics.create(self.registry),
                               max_in_flight=s.mqtt_max_in_flight, resend_after_s=s.outbox_resend_after_s)
            if self.embedded:
                self._worker_task = asyncio.create_task(
                    role.run_worker(settings=s, database_url=self.database_url, stop=self._worker_stop,
                                    registry=self.registry), name="ingest-worker")
        else:
            self.sink = await role.open_sink(settings=s, database_url=self.database_url, registry=self.registry)
            self.bus = InProcessBus(sink=self.sink, max_batch_rows=s.ingest_batch_max_rows)
        await self.bus.start()
        self.gateway = build_gateway(s, pool=self.pool, bus=self.bus, registry=self.registry)
        await self.gateway.start()
        app = create_app(registry=self.registry, api_token=load_or_create_api_token(s), health=self.health,
                         pool=self.pool, gateway=self.gateway, ocpi_token=s.ocpi_token,
                         ocpi_country_code=s.ocpi_country_code, ocpi_party_id=s.ocpi_party_id)
        self.http = HttpServer(app=app, host=s.http_host, port=s.http_port)
        await self.http.start()
        logger.info("HTTP API on http://%s:%d (healthz, metrics, /api/v1)", s.http_host, self.http.port)
        self.ready.set()

    async def health(self) -> dict[str, Any]:
        db_ok = False
        if self.pool is not None:
            with contextlib.suppress(Exception):
                db_ok = await self.pool.fetchval("SELECT 1", timeout=2) == 1
        return {"ok": db_ok, "database": db_ok,
                "chargers_connected": len(self.gateway.registry) if self.gateway else 0}

    async def stop(self) -> None:
        logger.info("stopping: chargers, HTTP, bus, ingest, database (each within %.0f s)",
                    self.settings.shutdown_timeout_s)
        t = self.settings.shutdown_timeout_s
        steps: list[tuple[str, Callable[[], Awaitable[Any]] | None]] = [
            ("gateway", (lambda: self.gateway.close(timeout_s=t)) if self.gateway else None),  # type: ignore[union-attr]
            ("http", self.http.stop if self.http else None),
            ("bus", self.bus.close if self.bus else None),
            ("ingest-worker", self._stop_worker if self._worker_task else None),
            ("ingest-sink", self.sink.close if self.sink else None),
            ("database-pool", self.pool.close if self.pool else None),
        ]
        for name, step in steps:
            if step is not None:
                async with _step(name, t):
                    await step()
        if self.pg is not None:
            async with _step("embedded-postgres", t + 30):
                await asyncio.to_thread(self.pg.stop)
        logger.info("stopped")

    async def _stop_worker(self) -> None:
        self._worker_stop.set()
        if self._worker_task is not None:
            await self._worker_task


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for security profiles 2 and 3: TLS 1.2 or newer only (A00.FR.313–315), no compression."""
    if settings.security_profile < 2:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    assert settings.tls_cert_file is not None
    assert settings.tls_key_file is not None
    ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.security_profile == 3:
        assert settings.tls_client_ca_file is not None
        ctx.verify_mode = ssl.CERT_REQUIRED  # unknown, invalid or expired certificates end the handshake
        ctx.load_verify_locations(settings.tls_client_ca_file)
    return ctx


def build_gateway(s: Settings, *, pool: asyncpg.Pool, bus: Bus, registry: CollectorRegistry,
                  validate_responses: bool = False) -> Gateway:
    metrics = GatewayMetrics.create(registry)
    policy = HandshakePolicy(pool=pool, endpoint_profile=s.security_profile, onboard_unknown=s.onboard_unknown,
                             rate_per_s=s.handshake_rate_per_source_per_s, burst=s.handshake_burst_per_source,
                             auth_failures_per_source_per_min=s.auth_failures_per_source_per_min,
                             auth_failures_per_id_per_min=s.auth_failures_per_id_per_min,
                             kdf_workers=s.kdf_workers, kdf_queue_max=s.kdf_queue_max,
                             kdf_queue_max_per_source=s.kdf_queue_max_per_source,
                             onboard_max_pending=s.onboard_max_pending, registry=registry)
    services = DbServices(pool=pool, heartbeat_interval_s=s.heartbeat_interval_s,
                          boot_retry_interval_s=s.boot_retry_interval_s, free_vend=s.free_vend)
    limits = GatewayLimits(ping_interval_s=s.ping_interval_s, ping_timeout_s=s.ping_timeout_s,
                           max_frame_bytes=s.max_frame_bytes, open_timeout_s=s.open_timeout_s,
                           call_timeout_s=s.call_timeout_s, heartbeat_interval_s=s.heartbeat_interval_s,
                           max_queued_calls=s.max_queued_calls_per_connection,
                           max_queued_commands=s.max_queued_commands_per_charger,
                           command_connect_wait_s=s.command_connect_wait_s,
                           connection_drain_timeout_s=s.connection_drain_timeout_s,
                           rejected_frame_log_interval_s=s.rejected_frame_log_interval_s,
                           rejected_frame_log_burst=s.rejected_frame_log_burst)
    return Gateway(host=s.ocpp_host, port=s.ocpp_port, base_path=s.ocpp_path, node_id=s.node_id, bus=bus,
                   metrics=metrics, policy=policy, services=services, limits=limits,
                   ssl_context=build_ssl_context(s), tolerant_models=tolerant_pairs(s),
                   validate_responses=validate_responses,
                   connection_epochs=functools.partial(allocate_connection_epoch, pool))


async def run_until_stopped(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                            stop_event: asyncio.Event) -> None:
    try:
        await start()
        await stop_event.wait()
    finally:
        await stop()


async def run_ingest(settings: Settings, stop_event: asyncio.Event) -> None:
    """``csms ingest``: the standalone worker plus its /metrics and /healthz."""
    if not settings.database_url:
        raise ConfigurationError("csms ingest needs --database-url (CSMS_DATABASE_URL)")
    await migrate(settings.database_url, timeout_s=settings.db_connect_timeout_s)
    registry = CollectorRegistry()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    register_pool_metrics(registry, pool, role="ingest")
    build = Info("csms_build", "Build information", registry=registry)
    build.info({"version": __version__, "role": "ingest"})

    async def health() -> dict[str, Any]:
        ok = False
        with contextlib.suppress(Exception):
            ok = await pool.fetchval("SELECT 1", timeout=2) == 1
        return {"ok": ok, "database": ok}

    http = HttpServer(app=create_app(registry=registry, api_token=load_or_create_api_token(settings),
                                     health=health, pool=None, gateway=None),
                      host=settings.http_host, port=settings.http_port)
    await http.start()
    role = load_ingest_role()
    try:
        await role.run_worker(settings=settings, database_url=settings.database_url, stop=stop_event,
                              registry=registry)
    finally:
        await http.stop()
        await pool.close()
