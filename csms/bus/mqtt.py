"""The bus over MQTT, publishing side: outbox first, then one MQTT session per process.

``publish`` returns once the events are fsync'ed in the node's outbox (see
``csms.bus.outbox``). A sender task drains the outbox to ``csms/v1/events/<node_id>`` with
QoS 1, several batches in flight, and listens on ``csms/v1/committed/<node_id>`` for the
ingest workers' confirmations, which trim the outbox. Batches not confirmed within
``resend_after_s`` (the broker crashed before delivering them, say) are sent again; so
are all unconfirmed batches after a reconnect. Ingest absorbs the duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import aiomqtt
import msgspec

from csms.bus.metrics import BusMetrics
from csms.bus.outbox import Outbox, OutboxRecord
from schemas.events import Event, encode_bundle
from schemas.topics import committed_topic, events_topic, parse_mqtt_url

# paho does not set TCP_NODELAY: with Nagle's algorithm each small write (a PUBLISH after the
# last one's PUBACK) waits for the peer's delayed ACK, ~40 ms on Linux (the broker side is set in
# deploy/mosquitto/mosquitto.conf; csms.bench.commands measured +82 ms per command hop without it).
TCP_NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

logger = logging.getLogger(__name__)

_RANGES = msgspec.msgpack.Decoder(list[tuple[int, int]])
# A bundle of outbox records stays well below the smallest broker packet limit we deploy
# against (EMQX's default max_packet_size is 1 MiB; Mosquitto's is 256 MiB).
BUNDLE_MAX_BYTES = 256 * 1024
GAUGES_INTERVAL_S = 0.25   # outbox gauges on the publish path: at most this often


def bundles(records: list[OutboxRecord], *, max_bytes: int = BUNDLE_MAX_BYTES) -> list[list[OutboxRecord]]:
    """Consecutive records in groups of at most ``max_bytes`` (a record over it goes alone).

    One MQTT publish per group instead of one per record: under load the outbox commits
    hundreds of small records a second, and the Python MQTT client's cost is per packet
    (a PUBLISH out, a PUBACK in). Only records whose sequence ranges touch share a group,
    so a bundle is one contiguous range, confirmed as one.
    """
    out: list[list[OutboxRecord]] = []
    size = 0
    for record in records:
        if out and out[-1][-1].last_seq + 1 == record.first_seq and size + len(record.payload) <= max_bytes:
            out[-1].append(record)
            size += len(record.payload)
        else:
            out.append([record])
            size = len(record.payload)
    return out


class MqttBus:
    def __init__(self, *, url: str, node_id: str, outbox_dir: Path, outbox_max_bytes: int, metrics: BusMetrics,
                 max_in_flight: int = 16, resend_after_s: float = 30.0, connect_timeout_s: float = 10.0,
                 publish_timeout_s: float = 10.0, fsync: bool = True, coalesce_s: float = 0.0,
                 commit_delay_s: float = 0.0) -> None:
        address = parse_mqtt_url(url)
        self._host, self._port, self._user, self._password = (address.host, address.port, address.username,
                                                               address.password)
        self._node_id = node_id
        self._topic = events_topic(node_id)
        self._outbox = Outbox(directory=outbox_dir, node_id=node_id, max_bytes=outbox_max_bytes, fsync=fsync,
                              commit_delay_s=commit_delay_s)
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._coalesce_s = coalesce_s
        self._resend_after_s = resend_after_s
        self._resend_wait_s = resend_after_s
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._sent_upto = -1
        self._last_progress = time.monotonic()
        self._down_since: float | None = None
        self._gauges_at = 0.0
        self.connected = False   # the broker session is up (readiness)

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    async def start(self) -> None:
        self._outbox.open()
        self._sent_upto = self._outbox.committed.watermark
        self._update_gauges()
        self._task = asyncio.create_task(self._run(), name="bus-mqtt-sender")

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            await self._outbox.append(events)
        except Exception:
            self._metrics.refused.inc()
            self._update_gauges()
            raise
        if time.monotonic() - self._gauges_at >= GAUGES_INTERVAL_S:
            self._update_gauges()  # the sender updates them too, on every send and confirmation

    def _update_gauges(self) -> None:
        self._gauges_at = time.monotonic()
        self._metrics.outbox_events.set(self._outbox.pending_events)
        self._metrics.outbox_bytes.set(self._outbox.pending_bytes)
        self._metrics.outbox_age.set(self._outbox.oldest_age_s())

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port, username=self._user, password=self._password,
                                          identifier=f"csms-node-{self._node_id}", clean_session=False,
                                          timeout=self._connect_timeout_s,
                                          max_inflight_messages=self._max_in_flight,
                                          socket_options=TCP_NO_DELAY) as client:
                    await client.subscribe(committed_topic(self._node_id), qos=1)
                    if self._down_since is not None:
                        logger.info("MQTT bus reconnected after %.1f s; %d events wait in the outbox",
                                    time.monotonic() - self._down_since, self._outbox.pending_events)
                    self._down_since = None
                    self.connected = True
                    self._metrics.connected.set(1)
                    backoff = 0.2
                    # After a (re)connect, whatever is unconfirmed may be lost in the broker: resend.
                    self._sent_upto = self._outbox.committed.watermark
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._confirmations(client), name="bus-mqtt-confirmations")
                        tg.create_task(self._send(client), name="bus-mqtt-send")
            except* (aiomqtt.MqttError, OSError, TimeoutError) as group:
                self.connected = False
                self._metrics.connected.set(0)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning("MQTT bus unavailable (%s); events stay in the outbox (%d waiting) "
                                   "and are sent when the broker is back", group.exceptions[0],
                                   self._outbox.pending_events)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._update_gauges()

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            pending = self._outbox.unconfirmed(self._sent_upto)
            if not pending:
                self._outbox.appended.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox.appended.wait(), 1.0)
                self._maybe_resend()
                self._update_gauges()
                continue
            window = bundles(pending)[: self._max_in_flight]
            started = time.perf_counter()
            next_window_at = time.monotonic() + self._coalesce_s
            await asyncio.gather(*(client.publish(self._topic, _message(group), qos=1,
                                                  timeout=self._publish_timeout_s) for group in window))
            self._metrics.publish_seconds.observe(time.perf_counter() - started)
            self._metrics.published.inc(sum(len(group) for group in window))
            self._metrics.messages.inc(len(window))
            self._sent_upto = window[-1][-1].last_seq
            self._maybe_resend()
            self._update_gauges()
            # Records written meanwhile wait for the rest of the interval and go as one bundle:
            # the Python MQTT client's cost is per packet, and the chargers were answered already.
            if (wait_s := next_window_at - time.monotonic()) > 0:
                await asyncio.sleep(wait_s)

    def _maybe_resend(self) -> None:
        mark = self._outbox.committed.watermark
        if mark >= self._sent_upto:
            self._last_progress = time.monotonic()
            self._resend_wait_s = self._resend_after_s
            return
        if time.monotonic() - self._last_progress > self._resend_wait_s:
            logger.warning("outbox: no confirmation for events %d–%d within %.0f s; sending them again",
                           mark + 1, self._sent_upto, self._resend_wait_s)
            self._metrics.resent.inc()
            self._sent_upto = mark
            self._last_progress = time.monotonic()
            # Back off while nothing is confirmed (ingest down): each resend adds the whole
            # backlog to the broker's queues again.
            self._resend_wait_s = min(self._resend_wait_s * 2, 32 * self._resend_after_s)

    async def _confirmations(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            try:
                ranges = _RANGES.decode(bytes(payload))
            except (msgspec.DecodeError, msgspec.ValidationError):
                logger.warning("ignoring a malformed confirmation on %s", message.topic)
                continue
            before = self._outbox.committed.watermark
            for first, last in ranges:
                self._outbox.confirm(first, last)
            if self._outbox.committed.watermark != before:
                self._last_progress = time.monotonic()
                self._resend_wait_s = self._resend_after_s
            self._update_gauges()

    async def close(self) -> None:
        """Stop sending; what is in the outbox stays there for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._outbox.close()
        self._metrics.connected.set(0)


def _message(group: list[OutboxRecord]) -> bytes:
    return group[0].payload if len(group) == 1 else encode_bundle([r.payload for r in group])
