"""Prometheus gauges of a database pool, read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge


def register_pool_metrics(registry: CollectorRegistry, pool: object, *, role: str) -> None:
    """Database pool usage (size and idle connections) as gauges read at scrape time."""
    size = Gauge("csms_db_pool_connections", "Connections in the database pool", ["role"], registry=registry)
    idle = Gauge("csms_db_pool_idle_connections", "Idle connections in the database pool", ["role"],
                 registry=registry)
    size.labels(role).set_function(lambda: float(getattr(pool, "get_size")()))  # noqa: B009
    idle.labels(role).set_function(lambda: float(getattr(pool, "get_idle_size")()))  # noqa: B009
