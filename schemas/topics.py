"""MQTT topic layout of the bus, version 1 (documented in ``schemas/BUS.md``)."""

from __future__ import annotations

TOPIC_ROOT = "csms/v1"
SHARED_GROUP = "ingest"


def events_topic(node_id: str) -> str:
    """Where a central-system node publishes its event batches."""
    return f"{TOPIC_ROOT}/events/{node_id}"


def events_subscription() -> str:
    """The shared subscription the ingest workers split the stream with."""
    return f"$share/{SHARED_GROUP}/{TOPIC_ROOT}/events/+"


def committed_topic(node_id: str) -> str:
    """Where ingest confirms, per node, the highest committed outbox sequence number."""
    return f"{TOPIC_ROOT}/committed/{node_id}"


def valid_node_id(node_id: str) -> bool:
    return bool(node_id) and not any(c in node_id for c in "/+#\0") and len(node_id) <= 64
