"""``csms ingest``: the standalone worker (found through the ``csms.roles`` entry point) and its HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Info

from csms import __version__
from csms.api.app import create_app
from csms.common.errors import ConfigurationError
from csms.run.central import load_or_create_api_token, migrate
from csms.run.gc_metrics import GcPauseMetrics
from csms.run.http_server import HttpServer
from csms.run.roles import load_ingest_role
from csms.store.metrics import register_pool_metrics
from schemas.settings import Settings


async def run_ingest(settings: Settings, stop_event: asyncio.Event) -> None:
    """``csms ingest``: the standalone worker plus its /metrics and /healthz."""
    if not settings.database_url:
        raise ConfigurationError("csms ingest needs --database-url (CSMS_DATABASE_URL)")
    await migrate(settings.database_url, timeout_s=settings.db_connect_timeout_s)
    metrics = CollectorRegistry()
    gc_pauses = GcPauseMetrics()
    gc_pauses.install(metrics)
    # The health check's own pool; the worker's writer has its own (ingest_db_pool_max).
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    register_pool_metrics(metrics, pool, role="ingest")
    build = Info("csms_build", "Build information", registry=metrics)
    build.info({"version": __version__, "role": "ingest"})

    async def ready() -> dict[str, Any]:
        ok = False
        with contextlib.suppress(Exception):
            ok = await pool.fetchval("SELECT 1", timeout=2) == 1
        return {"ok": ok, "database": ok}

    async def health() -> dict[str, Any]:
        return {**await ready(), "ok": True}   # liveness: the process answers

    http = HttpServer(app=create_app(metrics=metrics, api_token=load_or_create_api_token(settings),
                                     health=health, ready=ready, pool=None, gateway=None),
                      host=settings.http_host, port=settings.http_port,
                      graceful_shutdown_s=settings.http_graceful_shutdown_s)
    await http.start(timeout_s=settings.http_start_timeout_s)
    role = load_ingest_role()
    try:
        await role.run_worker(settings=settings, database_url=settings.database_url, stop=stop_event,
                              metrics=metrics)
    finally:
        await http.stop()
        await pool.close()
        gc_pauses.uninstall(metrics)
