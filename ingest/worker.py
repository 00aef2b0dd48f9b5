"""The ingest worker: bus messages in, committed rows out.

Standalone (``csms ingest``): a persistent MQTT session on a shared subscription,
so N workers split the stream. Messages are batched by size and time, decoded,
written in one idempotent transaction, and only then acknowledged. While the
database is down the worker retries with back-off and takes nothing more from the
broker (its in-flight window fills, so the broker holds the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import aiomqtt
import asyncpg
import msgspec

from ingest.metrics import IngestMetrics
from ingest.mqtt_consumer import AckingConsumer, ReceivedMessage
from ingest.writer import TimescaleWriter, WriteResult
from schemas.events import (
    QUALITY_FLAG_NAMES,
    Event,
    EventBatch,
    MeterEvent,
    StatusEvent,
    TransactionEvent,
    count_rows,
    decode_message,
)
from schemas.topics import committed_topic, events_subscription, valid_node_id

_RANGES = msgspec.msgpack.Encoder()

logger = logging.getLogger(__name__)


class MeteredWriter:
    """The idempotent writer with its metrics: batch size, commit time, rows, duplicates, end-to-end lag."""

    def __init__(self, *, writer: TimescaleWriter, metrics: IngestMetrics) -> None:
        self._writer = writer
        self._metrics = metrics

    @property
    def pool(self) -> asyncpg.Pool:
        """The writer's database pool (the roll-up and maintenance share it)."""
        return self._writer.pool

    @property
    def metrics(self) -> IngestMetrics:
        return self._metrics

    async def write_batch(self, events: Sequence[Event]) -> WriteResult:
        started = time.perf_counter()
        try:
            result = await self._writer.write_batch(events)
        except Exception:
            self._metrics.write_failures.inc()
            raise
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_rows.observe(count_rows(list(events)))
        for table, n in result.inserted.items():
            self._metrics.rows_written.labels(table).inc(n)
        for table, n in result.duplicates.items():
            self._metrics.duplicates.labels(table).inc(n)
        now = datetime.now(UTC)
        flagged: Counter[int] = Counter()
        for ev in events:
            self._metrics.e2e_lag.observe(max(0.0, (now - ev.received_at).total_seconds()))
            if isinstance(ev, MeterEvent):
                for s in ev.samples:
                    if s.flags:
                        flagged[s.flags] += 1
            elif isinstance(ev, TransactionEvent | StatusEvent) and ev.flags:
                flagged[ev.flags] += 1
        for flags, n in flagged.items():
            for bit, name in QUALITY_FLAG_NAMES.items():
                if flags & bit:
                    self._metrics.quality_flags.labels(name).inc(n)
        return result

    async def close(self) -> None:
        await self._writer.close()


class MqttIngestWorker:
    """Consume the bus from MQTT and commit batches, acknowledging after commit."""

    def __init__(self, *, writer: MeteredWriter, metrics: IngestMetrics, mqtt_url: str, client_id: str,
                 batch_max_rows: int, batch_max_delay_ms: int, max_in_flight_messages: int,
                 retry_max_s: float) -> None:
        self._writer = writer
        self._metrics = metrics
        self._mqtt_url = mqtt_url
        self._client_id = client_id
        self._batch_max_rows = batch_max_rows
        self._batch_max_delay_s = batch_max_delay_ms / 1000
        self._max_in_flight = max_in_flight_messages
        self._retry_max_s = retry_max_s
        self.committed_batches = 0
        self._confirming: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                consumer = AckingConsumer(url=self._mqtt_url, client_id=self._client_id,
                                          topic=events_subscription(), max_queued_messages=self._max_in_flight)
                async with consumer:
                    logger.info("ingest consuming %s as %s", events_subscription(), self._client_id)
                    backoff = 0.2
                    await self._consume(consumer, stop)
                    # A planned stop leaves the shared group; what this session still holds is
                    # not acknowledged, so the nodes send it again to the remaining workers.
                    await consumer.leave()
            except aiomqtt.MqttError as exc:
                logger.warning("MQTT connection lost (%s); reconnecting in %.1f s", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._retry_max_s)
            except Exception:
                if stop.is_set():
                    raise
                # Unacknowledged messages come back on the next connection: start over.
                logger.exception("ingest consumer failed; starting over in %.1f s", backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._retry_max_s)

    async def _consume(self, consumer: AckingConsumer, stop: asyncio.Event) -> None:
        # While one batch commits, the next is collected and decoded: the database and this
        # process work at the same time. Only one commit is in flight, so acknowledgements
        # still go out in the order the messages arrived (MQTT 3.1.1 §4.6).
        inflight: asyncio.Task[None] | None = None
        previous: tuple[list[ReceivedMessage], list[EventBatch]] | None = None
        try:
            while not stop.is_set():
                if inflight is not None and inflight.done():
                    await self._finish(consumer, inflight, previous)
                    inflight, previous = None, None
                collected = await self._collect(consumer)
                if collected is None:
                    continue
                if inflight is not None:
                    await self._finish(consumer, inflight, previous)
                previous = collected
                inflight = asyncio.create_task(self._commit_with_retry(collected[1], stop), name="ingest-commit")
        finally:
            if inflight is not None:
                with contextlib.suppress(Exception):
                    await self._finish(consumer, inflight, previous)

    async def _collect(self, consumer: AckingConsumer) -> tuple[list[ReceivedMessage], list[EventBatch]] | None:
        first = await consumer.get(0.5)
        if first is None:
            return None
        messages = [first]
        batches = self._decode([first])
        rows = sum(count_rows(b.events) for b in batches)
        deadline = time.monotonic() + self._batch_max_delay_s
        while rows < self._batch_max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = await consumer.get(remaining)
            if msg is None:
                break
            messages.append(msg)
            more = self._decode([msg])
            batches.extend(more)
            rows += sum(count_rows(b.events) for b in more)
        self._metrics.queue_depth.set(consumer.pending())
        return messages, batches

    async def _finish(self, consumer: AckingConsumer, commit: asyncio.Task[None],
                      collected: tuple[list[ReceivedMessage], list[EventBatch]] | None) -> None:
        await commit  # raises only when stopping while the database is down: then nothing is acked
        if collected is None:
            return
        messages, batches = collected
        for msg in messages:
            consumer.ack(msg)
        self.committed_batches += 1
        # The confirmation is not waited for: if it is lost, the node sends the batch again
        # and the duplicates are absorbed.
        task = asyncio.create_task(self._confirm(consumer, batches), name="ingest-confirm")
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    def _decode(self, messages: list[ReceivedMessage]) -> list[EventBatch]:
        out = []
        for msg in messages:
            try:
                out.extend(decode_message(msg.payload))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Acknowledged with its batch and counted: redelivering it would fail the same way.
                self._metrics.malformed.inc()
                logger.error("dropping undecodable bus message on %s (%d bytes): %s", msg.topic,
                             len(msg.payload), exc)
        return out

    async def _commit_with_retry(self, batches: list[EventBatch], stop: asyncio.Event) -> None:
        events = [e for b in batches for e in b.events]
        if not events:
            return
        delay = 0.2
        while True:
            try:
                await self._writer.write_batch(events)
                return
            except Exception as exc:  # a worker never dies of a failed batch: it retries it
                if stop.is_set():
                    raise
                if not isinstance(exc, asyncpg.PostgresError):
                    # The connection itself is suspect (server restarted, or left mid-operation,
                    # e.g. asyncpg's "cannot switch to state"): replace every pooled connection.
                    await self._writer.pool.expire_connections()
                logger.warning("batch of %d events not committed (%s: %s); retrying in %.1f s", len(events),
                               type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _confirm(self, consumer: AckingConsumer, batches: list[EventBatch]) -> None:
        """Tell each publishing node which sequence ranges are committed (trims its outbox).

        Ranges, not a high-water mark: with several workers on the shared subscription,
        batches of one node commit out of order. A lost confirmation only means the node
        sends the batch again, and the duplicates are absorbed.
        """
        ranges: dict[str, list[tuple[int, int]]] = {}
        for b in batches:
            if b.events:
                ranges.setdefault(b.node_id, []).append((b.first_seq, b.first_seq + len(b.events) - 1))
        for node, spans in ranges.items():
            if not valid_node_id(node):
                continue
            with contextlib.suppress(aiomqtt.MqttError):
                await consumer.publish(committed_topic(node), _RANGES.encode(spans))
