"""The bus over MQTT, publishing side: one MQTT session per central-system process.

Events are grouped into ``EventBatch`` messages (MessagePack, see schemas/BUS.md) and
published with QoS 1 on ``csms/v1/events/<node_id>``. Concurrent publishes that
arrive while a publish is in flight share the next message (group commit).

Durability note: a PUBACK means the broker holds the message in memory; Mosquitto
persists only periodic snapshots. The fsync'ed local outbox that makes this path
crash-safe belongs to the pipeline work (issue 4); until then ``publish`` returns
on PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import aiomqtt

from schemas import EVENT_SCHEMA_VERSION
from schemas.bus import BusError
from schemas.events import Event, EventBatch, count_rows, encode_batch
from schemas.topics import events_topic

logger = logging.getLogger(__name__)


def _parse(url: str) -> tuple[str, int, str | None, str | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
        raise ValueError(f"MQTT URL must look like mqtt://host:port, got {url!r}")
    return parts.hostname, parts.port or 1883, parts.username, parts.password


class MqttBus:
    def __init__(self, *, url: str, node_id: str, max_batch_rows: int = 2000, connect_timeout_s: float = 10.0,
                 publish_timeout_s: float = 10.0) -> None:
        self._host, self._port, self._user, self._password = _parse(url)
        self._node_id = node_id
        self._topic = events_topic(node_id)
        self._max_batch_rows = max_batch_rows
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._queue: asyncio.Queue[tuple[list[Event], asyncio.Future[None]]] = asyncio.Queue(maxsize=10000)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bus-mqtt-publisher")

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self._task is None:
            raise BusError("bus is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((list(events), fut))
        await fut

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port, username=self._user, password=self._password,
                                          identifier=f"csms-gw-{self._node_id}", clean_session=False,
                                          timeout=self._connect_timeout_s) as client:
                    self._connected.set()
                    backoff = 0.2
                    while True:
                        await self._publish_next(client)
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                logger.warning("MQTT bus disconnected (%s); reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _publish_next(self, client: aiomqtt.Client) -> None:
        first = await self._queue.get()
        items = [first]
        rows = count_rows(first[0])
        while rows < self._max_batch_rows and not self._queue.empty():
            item = self._queue.get_nowait()
            items.append(item)
            rows += count_rows(item[0])
        events = [e for evs, _ in items for e in evs]
        batch = EventBatch(schema_version=EVENT_SCHEMA_VERSION, node_id=self._node_id, first_seq=self._seq,
                           events=events, oldest_received_at=min((e.received_at for e in events),
                                                                 default=datetime.now(UTC)))
        try:
            await client.publish(self._topic, encode_batch(batch), qos=1, timeout=self._publish_timeout_s)
        except aiomqtt.MqttError as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(BusError(f"publish failed: {exc}"))
            raise
        self._seq += len(events)
        for _, fut in items:
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(BusError("bus closed"))
