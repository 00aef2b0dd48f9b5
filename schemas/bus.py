"""The bus between the central system and the ingest side: one small interface.

``publish`` returns only when the events are durable: committed to TimescaleDB
(in-process bus, embedded mode) or fsync'ed to the node's outbox (MQTT bus). The
central system answers a charger's data-carrying message only after that. The
implementations live in ``csms.bus``; this is the contract both sides know.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from schemas.events import Event


class BusError(RuntimeError):
    """The bus could not make the events durable (the charger will retry)."""


class BusFullError(BusError):
    """The bus is at its bound and refuses new events until it drains."""


class EventSink(Protocol):
    """Where events are committed (the ingest side's writer)."""

    async def write(self, events: Sequence[Event]) -> None:
        """Commit the events idempotently; raise on failure (nothing partially committed)."""


class Bus(Protocol):
    async def start(self) -> None: ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Return once the events are durable; raise ``BusError`` otherwise."""

    async def close(self) -> None:
        """Finish what was accepted, then stop."""
