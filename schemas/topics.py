"""MQTT topic layout of the bus, version 1 (documented in ``schemas/BUS.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

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


def node_commands_topic(node_id: str) -> str:
    """Where a gateway node receives what other nodes ask of the chargers it holds: operator commands
    and takeovers (close an older socket of a charger that reconnected elsewhere). QoS 1."""
    return f"{TOPIC_ROOT}/nodes/{node_id}/commands"


def node_replies_topic(node_id: str) -> str:
    """Where a gateway node receives the answers to the commands it forwarded. QoS 1."""
    return f"{TOPIC_ROOT}/nodes/{node_id}/replies"


def is_node_replies_topic(topic: str) -> bool:
    """A topic some node's replies are published on (a command's ``reply_to`` must be one)."""
    prefix, suffix = f"{TOPIC_ROOT}/nodes/", "/replies"
    return (topic.startswith(prefix) and topic.endswith(suffix)
            and valid_node_id(topic[len(prefix):len(topic) - len(suffix)]))


def valid_node_id(node_id: str) -> bool:
    return bool(node_id) and not any(c in node_id for c in "/+#\0") and len(node_id) <= 64


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://[user:password@]host[:port]`` (both sides of the bus read the same setting)."""
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "tcp"}:
        raise ValueError(f"MQTT URL must start with mqtt://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"MQTT URL has no host: {url!r}")
    return BrokerAddress(parts.hostname, parts.port or 1883, parts.username, parts.password)
