"""Roles that the ``csms`` command runs but that live in other packages.

``csms/`` and ``ingest/`` never import each other. The ingest package registers its
role object under the ``csms.roles`` entry-point group (see ``pyproject.toml``); the
command line looks it up by name and talks to it only through this protocol.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from typing import Protocol, cast

from prometheus_client import CollectorRegistry

from schemas.bus import EventSink
from schemas.settings import Settings


class ClosableSink(EventSink, Protocol):
    async def close(self) -> None: ...


class IngestRole(Protocol):
    """What the central system needs from the ingest side."""

    async def open_sink(self, *, settings: Settings, database_url: str,
                        registry: CollectorRegistry | None = None) -> ClosableSink:
        """An in-process sink that commits events to TimescaleDB (embedded mode)."""

    async def run_worker(self, *, settings: Settings, database_url: str, stop: asyncio.Event,
                         registry: CollectorRegistry) -> None:
        """Run the standalone worker (MQTT → TimescaleDB) until ``stop`` is set."""


class RoleNotFoundError(LookupError):
    """No installed package provides the role (is the project installed?)."""


def load_role(name: str) -> object:
    found = entry_points(group="csms.roles", name=name)
    for ep in found:
        return cast(object, ep.load())
    raise RoleNotFoundError(f"no package provides the {name!r} role; reinstall the project (pip install -e .)")


def load_ingest_role() -> IngestRole:
    return cast(IngestRole, load_role("ingest"))
