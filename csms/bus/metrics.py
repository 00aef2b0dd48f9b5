"""Prometheus metrics of the publishing side of the MQTT bus and its outbox."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class BusMetrics:
    """The publishing side of the MQTT bus and its outbox."""

    outbox_events: Gauge
    outbox_bytes: Gauge
    outbox_age: Gauge
    connected: Gauge
    refused: Counter
    published: Counter
    messages: Counter
    resent: Counter
    publish_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> BusMetrics:
        return cls(
            outbox_events=Gauge("csms_outbox_pending_events", "Events durable in the outbox, not yet confirmed "
                                "committed by ingest", registry=registry),
            outbox_bytes=Gauge("csms_outbox_pending_bytes", "Bytes of unconfirmed outbox records",
                               registry=registry),
            outbox_age=Gauge("csms_outbox_oldest_age_seconds", "Age of the oldest unconfirmed event",
                             registry=registry),
            connected=Gauge("csms_bus_connected", "1 while the MQTT bus is connected", registry=registry),
            refused=Counter("csms_outbox_refused_total", "Publishes refused because the outbox is full or failed",
                            registry=registry),
            published=Counter("csms_bus_published_batches_total", "Outbox batches published to MQTT "
                              "(including resends)", registry=registry),
            messages=Counter("csms_bus_mqtt_messages_total", "MQTT messages published: one batch, or a bundle of "
                             "consecutive batches (including resends)", registry=registry),
            resent=Counter("csms_bus_resends_total", "Times unconfirmed batches were sent again",
                           registry=registry),
            publish_seconds=Histogram("csms_bus_mqtt_publish_seconds", "Time for a window of batches to be "
                                      "acknowledged by the broker",
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                      registry=registry),
        )
