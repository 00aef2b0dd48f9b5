"""Roles that the ``csms`` command runs but that live in other packages.

``csms/`` and ``ingest/`` never import each other. The ingest package registers its
role object under the ``csms.roles`` entry-point group (see ``pyproject.toml``); the
command line looks it up by name (``csms.run.roles``) and talks to it only through this
protocol, which ``ingest/role.py`` declares its ``ROLE`` to be (so mypy checks both ends).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from prometheus_client import CollectorRegistry

from schemas.bus import EventSink
from schemas.settings import Settings


class ClosableSink(EventSink, Protocol):
    async def close(self) -> None: ...


class IngestRole(Protocol):
    """What the central system needs from the ingest side."""

    async def open_sink(self, *, settings: Settings, database_url: str,
                        metrics: CollectorRegistry | None = None) -> ClosableSink:
        """An in-process sink that commits events to TimescaleDB (embedded mode)."""

    async def run_worker(self, *, settings: Settings, database_url: str, stop: asyncio.Event,
                         metrics: CollectorRegistry) -> None:
        """Run the standalone worker (MQTT → TimescaleDB) until ``stop`` is set."""
