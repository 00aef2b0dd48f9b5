"""The in-process bus of ``csms run`` without MQTT: publish = committed to TimescaleDB."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from schemas.bus import BusError, EventSink
from schemas.events import Event, count_rows

logger = logging.getLogger(__name__)


class InProcessBus:
    """Group commit straight into the sink: concurrent publishes share one write.

    While one write is in flight, new publishes queue up; the next write takes all
    of them (up to ``max_batch_rows``). An idle bus writes a lone event at once, so
    there is no artificial delay (so ``ingest_batch_max_delay_ms`` does not apply here: it is
    the MQTT ingest worker's). ``max_pending_rows`` bounds memory: beyond it, ``publish``
    waits (back-pressure on the chargers' receive loops).
    """

    def __init__(self, *, sink: EventSink, max_batch_rows: int = 5000, max_pending_rows: int = 50000) -> None:
        self._sink = sink
        self._max_batch_rows = max_batch_rows
        self._queue: asyncio.Queue[tuple[list[Event], asyncio.Future[None]]] = asyncio.Queue()
        self._pending_rows = 0
        self._max_pending_rows = max_pending_rows
        self._room = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bus-inprocess-writer")

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self._closing or self._task is None:
            raise BusError("bus is not running")
        rows = count_rows(list(events))
        if not self._has_room(rows):  # the condition only when it is needed: it costs a lock per publish
            async with self._room:
                await self._room.wait_for(lambda: self._has_room(rows))
        self._pending_rows += rows
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((list(events), fut))
        await fut

    def _has_room(self, rows: int) -> bool:
        return self._pending_rows == 0 or self._pending_rows + rows <= self._max_pending_rows

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            rows = count_rows(first[0])
            while rows < self._max_batch_rows and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                rows += count_rows(item[0])
            events = [e for evs, _ in batch for e in evs]
            try:
                await self._sink.write(events)
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BusError("bus closed before the write finished"))
                raise
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the publishers
                logger.warning("in-process bus write failed: %s", exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BusError(f"write failed: {exc}"))
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
            async with self._room:
                self._pending_rows -= rows
                self._room.notify_all()

    async def close(self) -> None:
        """Stop accepting, let queued writes finish, then stop the writer task."""
        self._closing = True
        if self._task is None:
            return
        async with self._room:
            await self._room.wait_for(lambda: self._pending_rows == 0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
