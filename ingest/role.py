"""The ingest role, found by the ``csms`` command through the ``csms.roles`` entry point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from ingest.maintenance import maintenance_loop
from ingest.metrics import IngestMetrics
from ingest.rollup_thread import RollupThread
from ingest.worker import MeteredWriter, MqttIngestWorker
from ingest.writer import TimescaleWriter
from schemas.events import Event
from schemas.roles import IngestRole
from schemas.settings import Settings

logger = logging.getLogger(__name__)

class EmbeddedSink:
    """In-process sink for ``csms run``: commits events, runs maintenance in the background."""

    def __init__(self, *, writer: MeteredWriter, retention_days: int, rollup: RollupThread,
                 maintenance_interval_s: float) -> None:
        self._writer = writer
        self._stop = asyncio.Event()
        self._maintenance = asyncio.create_task(
            maintenance_loop(writer.pool, retention_days=retention_days,
                             interval_s=maintenance_interval_s, stop=self._stop),
            name="ingest-maintenance",
        )
        # Not on this loop: it serves the chargers (ingest/rollup_thread.py says why).
        self._rollup = rollup
        rollup.start()

    async def write(self, events: Sequence[Event]) -> None:
        await self._writer.write_batch(events)

    async def close(self) -> None:
        self._stop.set()
        await self._rollup.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._maintenance
        await self._writer.close()


class _IngestRole:
    async def open_sink(self, *, settings: Settings, database_url: str,
                        metrics: CollectorRegistry | None = None) -> EmbeddedSink:
        ingest_metrics = IngestMetrics.create(metrics if metrics is not None else CollectorRegistry())
        writer = await TimescaleWriter.connect(
            database_url=database_url, max_size=settings.ingest_db_pool_max,
            connect_timeout_s=settings.db_connect_timeout_s,
            single_statement_max_rows=settings.inprocess_bus_single_statement_max_rows)
        return EmbeddedSink(writer=MeteredWriter(writer=writer, metrics=ingest_metrics),
                            retention_days=settings.retention_days,
                            rollup=_rollup(settings, database_url, ingest_metrics),
                            maintenance_interval_s=settings.maintenance_interval_s)

    async def run_worker(self, *, settings: Settings, database_url: str, stop: asyncio.Event,
                         metrics: CollectorRegistry) -> None:
        if not settings.mqtt_url:
            raise ValueError("the ingest worker needs --mqtt-url (CSMS_MQTT_URL)")
        ingest_metrics = IngestMetrics.create(metrics)
        writer = MeteredWriter(writer=await TimescaleWriter.connect(
            database_url=database_url, max_size=settings.ingest_db_pool_max,
            connect_timeout_s=settings.db_connect_timeout_s,
            single_statement_max_rows=settings.ingest_single_statement_max_rows), metrics=ingest_metrics)
        worker = MqttIngestWorker(writer=writer, metrics=ingest_metrics, mqtt_url=settings.mqtt_url,
                                  client_id=f"csms-ingest-{settings.node_id}",
                                  batch_max_rows=settings.ingest_batch_max_rows,
                                  batch_max_delay_ms=settings.ingest_batch_max_delay_ms,
                                  max_in_flight_messages=settings.ingest_max_in_flight_messages,
                                  retry_max_s=settings.ingest_retry_max_s)
        rollup = _rollup(settings, database_url, ingest_metrics)   # off this loop: it takes the bus's batches
        rollup.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(worker.run(stop), name="ingest-mqtt")
                tg.create_task(maintenance_loop(writer.pool, retention_days=settings.retention_days,
                                                interval_s=settings.maintenance_interval_s, stop=stop),
                               name="ingest-maintenance")
        finally:
            await rollup.close()
            await writer.close()


def _rollup(settings: Settings, database_url: str, metrics: IngestMetrics) -> RollupThread:
    return RollupThread(database_url=database_url, interval_s=settings.rollup_interval_s,
                        connect_timeout_s=settings.db_connect_timeout_s, port_failures=metrics.rollup_port_failures)


ROLE: IngestRole = _IngestRole()
