"""Process composition: which parts run in which role, and the order they stop in.

Start order: database → migrations → bus (and its sink) → OCPP gateway → HTTP.
Stop order (each step bounded by ``shutdown_timeout_s``): stop accepting chargers and
close them with 1001 → HTTP → bus drains what it accepted → ingest sink/worker
flushes → database pool → embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from csms.api.app import create_app
from csms.bus.inprocess import InProcessBus
from csms.bus.metrics import BusMetrics
from csms.bus.mqtt import MqttBus
from csms.common.errors import ConfigurationError
from csms.gateway.certificates import SecurityDesk
from csms.gateway.metrics import ProcessLabelledRegistry
from csms.gateway.rotation import RotationCampaigns
from csms.gateway.server import Gateway
from csms.run.compose import build_gateway
from csms.run.embedded_pg import EmbeddedPostgres
from csms.run.fleet import Fleet, start_fleet
from csms.run.gc_metrics import GcPauseMetrics
from csms.run.http_server import HttpServer, metrics_app
from csms.run.key_rotation import start_key_rotation
from csms.run.roles import load_ingest_role
from csms.run.security_desk import start_security_desk
from csms.run.workers import WorkerSlot
from csms.store.metrics import register_pool_metrics
from schemas.bus import Bus
from schemas.migrate import apply_migrations
from schemas.roles import ClosableSink
from schemas.settings import Settings

logger = logging.getLogger(__name__)


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

    def __init__(self, settings: Settings, *, embedded: bool, worker: WorkerSlot | None = None) -> None:
        self.settings = settings
        self.embedded = embedded
        # One of the gateway workers of a host (csms run|serve --workers N): shared ports, own metrics port.
        self.worker = worker
        self.metrics_http: HttpServer | None = None
        self.metrics = CollectorRegistry()
        self.gc_pauses = GcPauseMetrics()
        self.database_url: str | None = settings.database_url
        self.pg: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.bus: Bus | None = None
        self.sink: ClosableSink | None = None
        self.gateway: Gateway | None = None
        self.fleet: Fleet | None = None
        self.security: SecurityDesk | None = None   # certificates and security events (issue 14)
        self.rotations: RotationCampaigns | None = None   # key rotation campaigns (issue 14)
        self.http: HttpServer | None = None
        self._worker_stop = asyncio.Event()
        self._worker_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.gc_pauses.install(self.metrics)
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
        register_pool_metrics(self.metrics, self.pool, role="serve")
        role = load_ingest_role()
        if s.mqtt_url:
            self.bus = MqttBus(url=s.mqtt_url, node_id=s.node_id, outbox_dir=s.data_dir / "outbox" / s.node_id,
                               outbox_max_bytes=s.outbox_max_bytes, metrics=BusMetrics.create(self.metrics),
                               max_in_flight=s.mqtt_max_in_flight, resend_after_s=s.outbox_resend_after_s,
                               coalesce_s=s.mqtt_coalesce_ms / 1000,
                               commit_delay_s=s.outbox_commit_delay_ms / 1000)
            if self.embedded:
                self._worker_task = asyncio.create_task(
                    role.run_worker(settings=s, database_url=self.database_url, stop=self._worker_stop,
                                    metrics=self.metrics), name="ingest-worker")
        else:
            self.sink = await role.open_sink(settings=s, database_url=self.database_url, metrics=self.metrics)
            self.bus = InProcessBus(sink=self.sink, max_batch_rows=s.ingest_batch_max_rows,
                                    max_pending_rows=s.inprocess_bus_max_pending_rows)
        await self.bus.start()
        self.gateway = build_gateway(s, pool=self.pool, bus=self.bus, metrics=self.metrics,
                                     reuse_port=self.worker is not None)
        # The fleet registry and commands across nodes; before the first charger is accepted.
        self.fleet = await start_fleet(s, pool=self.pool, bus=self.bus, gateway=self.gateway, metrics=self.metrics)
        self.security = start_security_desk(s, pool=self.pool, gateway=self.gateway, metrics=self.metrics)
        self.rotations = start_key_rotation(s, pool=self.pool, gateway=self.gateway, metrics=self.metrics)
        await self.gateway.start()
        exported = ProcessLabelledRegistry(self.metrics, self.worker.labels) if self.worker else self.metrics
        app = create_app(metrics=exported, api_token=load_or_create_api_token(s), health=self.health,
                         ready=self.readiness,
                         pool=self.pool, gateway=self.gateway, ocpi_token=s.ocpi_token,
                         ocpi_country_code=s.ocpi_country_code, ocpi_party_id=s.ocpi_party_id)
        self.http = HttpServer(app=app, host=s.http_host, port=s.http_port,
                               graceful_shutdown_s=s.http_graceful_shutdown_s, reuse_port=self.worker is not None)
        await self.http.start(timeout_s=s.http_start_timeout_s)
        if self.worker is not None:
            self.metrics_http = HttpServer(app=metrics_app(exported, self.health, self.readiness), host=s.http_host,
                                           port=self.worker.metrics_port,
                                           graceful_shutdown_s=s.http_graceful_shutdown_s)
            await self.metrics_http.start(timeout_s=s.http_start_timeout_s)
        logger.info("HTTP API on http://%s:%d (healthz, metrics, /api/v1)", s.http_host, self.http.port)
        self.ready.set()

    async def health(self) -> dict[str, Any]:
        """Liveness (/healthz): the process answers; what it depends on is reported, not judged, so
        that a database outage does not make an orchestrator restart every gateway."""
        db_ok = await self._database_ok()
        return {"ok": True, "database": db_ok,
                "chargers_connected": len(self.gateway.live) if self.gateway else 0}

    async def readiness(self) -> dict[str, Any]:
        """Readiness (/readyz): this node can take chargers now — database reachable, the MQTT bus
        connected (with --mqtt-url), and not draining."""
        db_ok = await self._database_ok()
        bus_ok = self.bus.connected if isinstance(self.bus, MqttBus) else self.bus is not None
        draining = self.gateway.draining if self.gateway else True
        return {"ok": db_ok and bus_ok and not draining, "database": db_ok, "bus": bus_ok, "draining": draining}

    async def _database_ok(self) -> bool:
        if self.pool is None:
            return False
        with contextlib.suppress(Exception):
            return bool(await self.pool.fetchval("SELECT 1", timeout=2) == 1)
        return False

    async def stop(self) -> None:
        logger.info("stopping: chargers, HTTP, bus, ingest, database (each within %.0f s)",
                    self.settings.shutdown_timeout_s)
        t = self.settings.shutdown_timeout_s
        steps: list[tuple[str, Callable[[], Awaitable[Any]] | None]] = [
            ("key-rotation", self.rotations.close if self.rotations else None),   # before its chargers go
            ("gateway", (lambda: self.gateway.close(timeout_s=t)) if self.gateway else None),  # type: ignore[union-attr]
            ("fleet", (lambda: self.fleet.stop(timeout_s=t)) if self.fleet else None),  # type: ignore[union-attr]
            ("security-desk", self.security.close if self.security else None),
            ("http", self.http.stop if self.http else None),
            ("metrics-http", self.metrics_http.stop if self.metrics_http else None),
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
        self.gc_pauses.uninstall(self.metrics)
        logger.info("stopped")

    async def _stop_worker(self) -> None:
        self._worker_stop.set()
        if self._worker_task is not None:
            await self._worker_task


async def run_until_stopped(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                            stop_event: asyncio.Event) -> None:
    try:
        await start()
        await stop_event.wait()
    finally:
        await stop()


